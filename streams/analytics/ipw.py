"""Inverse-propensity estimates from an `ExperimentSnapshot`, and their influence sums.

Every decision t of a segment chose variant V_t with the logged propensity p_t = π_t(V_t)
of the allocation in force at that moment; y_t = 1 when it converted. For a variant v, the
score z_t = 1{V_t = v} y_t / π_t(v) has E[z_t | past] = μ_v (the rate v would have on that
visit) whatever the allocation was, because π_t is fixed before the draw. So the
Horvitz–Thompson rate

    μ̂_v = Σ_t z_t / N = ipw_conversions / decisions

is unbiased for "the rate if every visitor of the segment had been shown v", averaged over
the segment's traffic, under any adaptive allocation with propensities bounded away from 0
(the policy's floor). The raw rate conversions / exposures is not: it weights the periods
and segments where v was shown more, so it mixes different allocations (Simpson) and
carries the negative bias of adaptively collected means (Nie et al. 2018). The number of
decisions of a segment is its exposures of record over all variants.

Only one variant's score is non-zero per decision, so the sums the snapshot keeps
(Σ y/p, Σ y/p², Σ 1/p, Σ 1/p²) give every sum of squares the linearised estimators below
need: `influence_ss` = Σ_t φ_t², with φ_t the influence of decision t, in units of the
estimate (so σ̂²/N = influence_ss / N²). These feed `sequential.py`.

Σ y/p² estimates Σ_t μ/π_t(v) from the conversions alone: with rare conversions and a few
large weights (a variant starved at the policy's floor) it is often far too small, zero when
the starved cell has not converted yet, and intervals built on it undercover (measured with
`bandit-stream bench aa`: |T| > 3 five times as often as for a normal). For a binary outcome
E[Σ_{exposures of v} y/p²] = Σ_t μ_t/π_t(v), and μ̃ · Σ 1/p² estimates the same thing from
every exposure of v, converted or not. `Cells.y2_floored` takes the larger of the two per
cell, with μ̃ the cell's raw rate shrunk toward its segment's raw rate by `SHRINK_EXPOSURES`
pseudo-exposures (a cell without a conversion still has a variance). Used only for
variances, never for the estimates, so the estimates stay unbiased; the floor makes the
intervals wider, never narrower, than the plain plug-in.

Everything is vectorised over (segments × variants) arrays and total (NaN, never raises).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streams.core.snapshot import ExperimentSnapshot

SHRINK_EXPOSURES = 20.0
"""Pseudo-exposures at the segment's rate in the variance floor of a cell."""


@dataclass(frozen=True, eq=False)
class Cells:
    """The snapshot as arrays: rows = segments (sorted keys), columns = `variants`."""

    segments: tuple[str, ...]
    variants: tuple[str, ...]
    exposures: np.ndarray
    conversions: np.ndarray
    value: np.ndarray
    repeat: np.ndarray
    w: np.ndarray  # Σ 1/p
    w2: np.ndarray  # Σ 1/p²
    y: np.ndarray  # Σ y/p
    y2: np.ndarray  # Σ y/p²
    decisions: np.ndarray  # per segment: exposures of record over every variant

    @classmethod
    def from_snapshot(cls, snapshot: ExperimentSnapshot, variants: Sequence[str]) -> Cells:
        keys = tuple(sorted(snapshot.segments))
        variants = tuple(variants)
        shape = (len(keys), len(variants))
        arrays = {name: np.zeros(shape) for name in _FIELDS}
        decisions = np.zeros(len(keys))
        for i, key in enumerate(keys):
            segment = snapshot.segments[key]
            decisions[i] = max(0, sum(max(0, s.exposures) for s in segment.variants.values()))
            for j, variant in enumerate(variants):
                stats = segment.stats(variant)
                for name, attribute in _FIELDS.items():
                    arrays[name][i, j] = float(getattr(stats, attribute))
        for array in arrays.values():
            np.nan_to_num(array, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            np.maximum(array, 0.0, out=array)
        return cls(keys, variants, decisions=decisions, **arrays)

    @property
    def y2_floored(self) -> np.ndarray:
        """max(Σ y/p², μ̃ Σ 1/p²) per cell (see the module docstring)."""
        segment_rate = np.nan_to_num(
            _div(self.conversions.sum(axis=1), self.exposures.sum(axis=1))
        )[:, None]
        shrunk = (self.conversions + SHRINK_EXPOSURES * segment_rate) / (
            self.exposures + SHRINK_EXPOSURES
        )
        return np.maximum(self.y2, shrunk * self.w2)

    def minus(self, earlier: Cells) -> Cells:
        """Counts accrued since `earlier` (same variants; segments missing there count 0)."""
        index = {key: i for i, key in enumerate(earlier.segments)}
        rows = [index.get(key, -1) for key in self.segments]

        def delta(now: np.ndarray, before: np.ndarray) -> np.ndarray:
            padded = np.concatenate([before, np.zeros((1, *before.shape[1:]))])
            return np.maximum(now - padded[rows], 0.0)

        arrays = {name: delta(getattr(self, name), getattr(earlier, name)) for name in _FIELDS}
        decisions = delta(self.decisions, earlier.decisions)
        return Cells(self.segments, self.variants, decisions=decisions, **arrays)


_FIELDS = {
    "exposures": "exposures",
    "conversions": "conversions",
    "value": "conversion_value",
    "repeat": "repeat_conversions",
    "w": "ipw_weight",
    "w2": "ipw_weight_sq",
    "y": "ipw_conversions",
    "y2": "ipw_conversions_sq",
}


def _div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


@dataclass(frozen=True, eq=False)
class Linear:
    """An asymptotically linear estimate: θ̂, Σ φ_t² and the N observations behind it."""

    estimate: np.ndarray
    influence_ss: np.ndarray
    n: np.ndarray

    @property
    def standard_error(self) -> np.ndarray:
        return _div(np.sqrt(np.maximum(self.influence_ss, 0.0)), self.n)

    @property
    def t(self) -> np.ndarray:
        """θ̂ / se (NaN when the standard error is 0 or undefined)."""
        se = self.standard_error
        return np.where(se > 0, _div(self.estimate, se), np.nan)


def ht_rate(y: np.ndarray, y2: np.ndarray, decisions: np.ndarray) -> Linear:
    """μ̂ = Σz / N; φ_t = z_t - μ̂, so Σφ² = Σz² - N μ̂²."""
    mu = _div(y, decisions)
    return Linear(mu, np.maximum(y2 - decisions * mu * mu, 0.0), np.asarray(decisions, float))


def log_ratio_within(
    ya: np.ndarray, y2a: np.ndarray, yb: np.ndarray, y2b: np.ndarray, decisions: np.ndarray
) -> Linear:
    """log(μ_a / μ_b) for two variants on the same decisions.

    φ_t = (z_a,t - μ_a)/μ_a - (z_b,t - μ_b)/μ_b = z_a,t/μ_a - z_b,t/μ_b (the constants
    cancel), and z_a z_b = 0 on every decision, so Σφ² = Σz_a²/μ_a² + Σz_b²/μ_b².
    """
    mu_a, mu_b = _div(ya, decisions), _div(yb, decisions)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.log(mu_a) - np.log(mu_b)
        ss = y2a / (mu_a * mu_a) + y2b / (mu_b * mu_b)
    ok = (mu_a > 0) & (mu_b > 0)
    return Linear(np.where(ok, estimate, np.nan), np.where(ok, ss, np.nan), decisions)


def log_ratio_part_to_whole(
    y_part: np.ndarray,
    y2_part: np.ndarray,
    n_part: np.ndarray,
    y_whole: np.ndarray,
    y2_whole: np.ndarray,
    n_whole: np.ndarray,
) -> Linear:
    """log(μ_part / μ_whole): a segment's rate of v against v's rate over all traffic.

    Over the N decisions of the experiment with q = N_s / N, μ_s = Σ_{t∈s} z / N_s and
    μ = Σ z / N: φ_t = 1{t∈s} (z_t - μ_s) / (q μ_s) - (z_t - μ) / μ, i.e. φ_t = A z_t + B
    inside the segment (A = 1/(q μ_s) - 1/μ, B = 1 - 1/q) and C z_t + D outside
    (C = -1/μ, D = 1); Σφ² follows from Σz, Σz² and the counts of each part.
    """
    n_rest = n_whole - n_part
    y_rest = y_whole - y_part
    y2_rest = y2_whole - y2_part
    mu_s, mu = _div(y_part, n_part), _div(y_whole, n_whole)
    q = _div(n_part, n_whole)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = 1.0 / (q * mu_s) - 1.0 / mu
        b = 1.0 - 1.0 / q
        c = -1.0 / mu
        ss = (
            a * a * y2_part + 2 * a * b * y_part + b * b * n_part
            + c * c * y2_rest + 2 * c * y_rest + n_rest
        )  # fmt: skip
        estimate = np.log(mu_s) - np.log(mu)
    ok = (mu_s > 0) & (mu > 0) & (q > 0)
    n = np.broadcast_to(np.asarray(n_whole, dtype=float), np.shape(estimate))
    return Linear(np.where(ok, estimate, np.nan), np.where(ok, np.maximum(ss, 0.0), np.nan), n)


def log_ratio_independent(first: Linear, second: Linear) -> Linear:
    """log(μ_1 / μ_2) for rates from disjoint decisions (e.g. two periods): the delta
    method, Var = se_1²/μ_1² + se_2²/μ_2², returned on the pooled count of decisions."""
    n = first.n + second.n
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.log(first.estimate) - np.log(second.estimate)
        var = (first.standard_error / first.estimate) ** 2 + (
            second.standard_error / second.estimate
        ) ** 2
    ok = (first.estimate > 0) & (second.estimate > 0)
    return Linear(np.where(ok, estimate, np.nan), np.where(ok, var * n * n, np.nan), n)
