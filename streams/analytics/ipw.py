"""Inverse-propensity (Hájek) rates from an `ExperimentSnapshot`, and their influence sums.

Every decision t of a segment chose variant V_t with the logged propensity p_t = π_t(V_t)
of the allocation in force at that moment; y_t = 1 when it converted (first conversions
only: y is binary). For a variant v let

    z_t = 1{V_t = v} y_t / π_t(v),    w_t = 1{V_t = v} / π_t(v),

Z = Σ_t z_t = ipw_conversions and W = Σ_t w_t = ipw_weight (sums over the exposures of v).
Because π_t is fixed before the draw, E[z_t | past] = μ_t(v) (the rate v would have on that
visit) and E[w_t | past] = 1, whatever the allocation was. The rate is the Hájek
(self-normalised) estimate

    μ̂_v = Z / W = Σ_{exposures of v} y/p / Σ_{exposures of v} 1/p,

"the rate if every visitor of the segment had been shown v", averaged over the segment's
traffic. Z/N and W/N (N = the segment's decisions, its exposures of record over all
variants) converge to μ_v and 1 under any adaptive allocation with propensities bounded
away from 0 (the policy's floor: martingale laws of large numbers), so μ̂_v is consistent;
its bias is O(1/N). It is a weighted mean of the y of v's exposures, so it is always in
[0, 1]. The Horvitz–Thompson rate Z/N that it replaces is exactly unbiased but unbounded:
a few conversions at small propensities made Z exceed N (a demo's lift report published a
rate of 1.078, outside its own interval clipped to [0, 1]). The raw rate conversions /
exposures is neither: it weights the periods and segments where v was shown more, so it
mixes different allocations (Simpson) and carries the negative bias of adaptively collected
means (Nie et al. 2018).

Linearisation (the `Linear` estimates below; these feed `sequential.py`). μ̂ - μ =
Σ_t (z_t - μ w_t) / W, and W/N → 1, so the influence of decision t is

    φ_t = (z_t - μ̂ w_t) / (W/N),    Σ_t φ_t = 0,

in units of the estimate, with σ̂²/N = Var̂(μ̂) = Σφ²/N² = `influence_ss` / `n`²
(`n` = N, the decisions the estimate is a mean over). Then

    Σφ² = (N/W)² (Σz² - 2μ̂ Σzw + μ̂² Σw²),

and only exposures of v contribute, where z = y/p and w = 1/p. For binary y, z² = zw = y/p²,
so Σz² = Σzw = Σ y/p² = Y2 (ipw_conversions_sq) and Σw² = Σ 1/p² = W2 (ipw_weight_sq):

    Σφ² = (N/W)² ((1 - 2μ̂) Y2 + μ̂² W2) = (N/W)² ((1 - μ̂)² Y2 + μ̂² (W2 - Y2)),

the second form splitting Σ (y - μ̂)²/p² into the converted exposures (y = 1, Σ 1/p² = Y2)
and the others (y = 0, Σ 1/p² = W2 - Y2). It estimates Σ_t E[(z_t - μ w_t)² | past] =
Σ_t (μ_t (1 - μ_t) + (μ_t - μ)²) / π_t(v); for a constant μ_t = μ that is μ (1 - μ) Σ_t 1/π_t,
below Horvitz–Thompson's Σ_t E[(z_t - μ)² | past] = μ Σ_t 1/π_t - N μ² by μ² Σ_t (1/π_t - 1):
the noise of W around N, which the self-normalisation removes.

Every estimator here has influences of the form φ_t = N (a y_t + b) / p_t on the exposures
of one variant in one set of decisions (a and b constants of that set), so

    Σφ² = N² ((a + b)² Y2 + b² (W2 - Y2))                                      (*)

summed over the sets (`_influence_ss`); the four sums the snapshot keeps per cell give every
sum of squares needed.

The variance floor. Y2 = Σ y/p² estimates Σ_t μ_t/π_t(v) from the conversions alone: with
rare conversions and a few large weights (a variant starved at the policy's floor) it is
often far too small, zero when the starved cell has not converted yet, and intervals built
on it undercover (measured with `bandit-stream bench aa` for the Horvitz–Thompson rate:
|T| > 3 five times as often as for a normal). μ̃ · W2 estimates the same Σ_t μ_t/π_t(v)
from every exposure of v, converted or not. `Cells.y2_floored` takes the larger of the two per
cell, with μ̃ the cell's raw rate shrunk toward its segment's raw rate by
`SHRINK_EXPOSURES` pseudo-exposures (a cell without a conversion still has a variance). The
floor replaces Y2 only in the converted term (a + b)² Y2 of (*), never in the estimates and
never in W2 - Y2:

* W2 - Y2 = Σ_{non-converted exposures} 1/p² is observed directly from the exposures
  that did not convert (the large majority at conversion rates of a few %), so it is not
  what the floor is for;
* the floor must make intervals wider, never narrower. In the expanded form
  (1 - 2μ̂) Y2 + μ̂² W2 the coefficient of Y2 is negative once μ̂ > 1/2, so flooring Y2
  everywhere would shrink the variance; in the split form Y2 appears with (a + b)² ≥ 0
  only, so raising it can only raise Σφ².

For a starved cell without a conversion (μ̂ = 0) this gives Σφ² = (N/W)² μ̃ W2 > 0 instead
of 0.

Everything is vectorised over (segments × variants) arrays and total (NaN, never raises).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    def sums(self) -> Sums:
        """Per cell: the sums the estimators take, with the variance floor of Σ y/p²."""
        return Sums(self.y, self.w, self.y2, self.w2, self.y2_floored)

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


def kish(w: np.ndarray | float, w2: np.ndarray | float) -> np.ndarray:
    """Kish's effective sample size (Σ 1/p)² / Σ 1/p² of exposures with weights 1/p (from
    `Cells.w`, `Cells.w2`): the number of equally weighted exposures a weighted mean over them
    is as precise as, ≤ the exposures (equal only when every p is the same). NaN without any."""
    w = np.asarray(w, dtype=float)
    return _div(w * w, w2)


@dataclass(frozen=True, eq=False)
class Sums:
    """Σ y/p, Σ 1/p, Σ y/p², Σ 1/p² over the exposures of one variant in some decisions,
    and `y2_floor` ≥ y2, what stands for Σ y/p² in the converted term of a variance (the
    module docstring; `Cells.y2_floored`, or y2 itself for the plain plug-in)."""

    y: np.ndarray
    w: np.ndarray
    y2: np.ndarray
    w2: np.ndarray
    y2_floor: np.ndarray

    def map(self, f: Callable[[np.ndarray], np.ndarray]) -> Sums:
        """`f` applied to every sum, e.g. `lambda a: a.sum(axis=0)` or a column selection."""
        return Sums(f(self.y), f(self.w), f(self.y2), f(self.w2), f(self.y2_floor))

    def __sub__(self, other: Sums) -> Sums:
        """The sums over the exposures in `self` but not in `other` (clipped at 0)."""

        def minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.maximum(np.asarray(a, float) - np.asarray(b, float), 0.0)

        return Sums(
            minus(self.y, other.y), minus(self.w, other.w), minus(self.y2, other.y2),
            minus(self.w2, other.w2), minus(self.y2_floor, other.y2_floor),
        )  # fmt: skip

    @staticmethod
    def stack(parts: Sequence[Sums]) -> Sums:
        """Rows of several `Sums` stacked (np.vstack of each sum)."""
        return Sums(*(np.vstack([getattr(p, name) for p in parts]) for name in _SUMS))


_SUMS = ("y", "w", "y2", "w2", "y2_floor")


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


def _influence_ss(a: np.ndarray, b: np.ndarray, sums: Sums, n: np.ndarray) -> np.ndarray:
    """Σφ² for φ_t = N (a y_t + b) / p_t over the exposures in `sums`: formula (*) of the
    module docstring, N² ((a + b)² Y2 + b² (W2 - Y2)), with the variance floor in the
    converted term only."""
    not_converted = np.maximum(np.asarray(sums.w2, float) - sums.y2, 0.0)
    n = np.asarray(n, dtype=float)
    return n * n * ((a + b) ** 2 * sums.y2_floor + b * b * not_converted)


def hajek_rate(sums: Sums, decisions: np.ndarray) -> Linear:
    """μ̂ = Z / W over `decisions` N (the decisions of the rows the sums cover).

    φ_t = (z_t - μ̂ w_t) N / W = N (y_t - μ̂) / (W p_t) on the exposures of v: a = 1/W,
    b = -μ̂/W in (*), so Σφ² = (N/W)² ((1 - μ̂)² Y2 + μ̂² (W2 - Y2)), Y2 floored in the first
    term. NaN where there is no exposure (W = 0).
    """
    mu = _div(sums.y, sums.w)
    inverse_w = _div(1.0, sums.w)
    n = np.broadcast_to(np.asarray(decisions, dtype=float), np.shape(mu))
    with np.errstate(invalid="ignore"):
        ss = _influence_ss(inverse_w, -mu * inverse_w, sums, n)
    return Linear(mu, ss, n)


def log_ratio_within(a: Sums, b: Sums, decisions: np.ndarray) -> Linear:
    """log(μ_a / μ_b) for two variants on the same N decisions.

    The influence of log μ̂_v is φ_v,t / μ̂_v = N (z_t - μ̂_v w_t) / (μ̂_v W_v) =
    N (y_t - μ̂_v) / (Z_v p_t) on the exposures of v (μ̂_v W_v = Z_v), zero elsewhere. So
    φ_t = φ_a,t/μ̂_a - φ_b,t/μ̂_b, and the two terms are never non-zero on the same decision
    (one variant per decision): Σφ² is the sum of each variant's own (*) with
    a = 1/Z_v, b = -μ̂_v/Z_v = -1/W_v, i.e.
    Σφ² = N² Σ_v ((1 - μ̂_v)² Y2_v + μ̂_v² (W2_v - Y2_v)) / Z_v².
    """
    mu_a, mu_b = _div(a.y, a.w), _div(b.y, b.w)
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.log(mu_a) - np.log(mu_b)
        ss = _influence_ss(1.0 / a.y, -1.0 / a.w, a, decisions) + _influence_ss(
            1.0 / b.y, -1.0 / b.w, b, decisions
        )
    ok = (mu_a > 0) & (mu_b > 0)
    n = np.broadcast_to(np.asarray(decisions, dtype=float), np.shape(estimate))
    return Linear(np.where(ok, estimate, np.nan), np.where(ok, ss, np.nan), n)


def log_ratio_part_to_whole(part: Sums, whole: Sums, n_whole: np.ndarray) -> Linear:
    """log(μ_part / μ_whole): a segment's rate of v against v's rate over all traffic.

    Over the N decisions of the experiment, μ̂_s = Z_s / W_s (the segment's exposures of v)
    and μ̂ = Z / W (all of v's exposures). The influences of their logs are
    N 1{t∈s} (z_t - μ̂_s w_t) / Z_s and N (z_t - μ̂ w_t) / Z, so

        φ_t = N [1{t∈s} (z_t - μ̂_s w_t) / Z_s - (z_t - μ̂ w_t) / Z],    Σ_t φ_t = 0.

    With z = y/p, w = 1/p and μ̂_s/Z_s = 1/W_s, μ̂/Z = 1/W: inside the segment
    φ_t = N (a y_t + b) / p_t with a = 1/Z_s - 1/Z, b = 1/W - 1/W_s; outside it (the rest,
    whole - part) a = -1/Z, b = 1/W. Σφ² is (*) over each. The segment's own number of
    decisions does not enter (the Hájek rate normalises by W_s, not by it).
    """
    rest = whole - part
    mu_s, mu = _div(part.y, part.w), _div(whole.y, whole.w)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse_z, inverse_w = 1.0 / np.asarray(whole.y, float), 1.0 / np.asarray(whole.w, float)
        a_in = 1.0 / np.asarray(part.y, float) - inverse_z
        b_in = inverse_w - 1.0 / np.asarray(part.w, float)
        ss = _influence_ss(a_in, b_in, part, n_whole) + _influence_ss(
            -inverse_z, inverse_w, rest, n_whole
        )
        estimate = np.log(mu_s) - np.log(mu)
    ok = (mu_s > 0) & (mu > 0)
    n = np.broadcast_to(np.asarray(n_whole, dtype=float), np.shape(estimate))
    return Linear(np.where(ok, estimate, np.nan), np.where(ok, np.maximum(ss, 0.0), np.nan), n)


def log_ratio_independent(first: Linear, second: Linear) -> Linear:
    """log(μ_1 / μ_2) for rates from disjoint decisions (e.g. two periods): the delta
    method, Var = se_1²/μ_1² + se_2²/μ_2², returned on the pooled count of decisions N
    (so `influence_ss` = Var · N², the units `sequential.py` reads)."""
    n = first.n + second.n
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.log(first.estimate) - np.log(second.estimate)
        var = (first.standard_error / first.estimate) ** 2 + (
            second.standard_error / second.estimate
        ) ** 2
    ok = (first.estimate > 0) & (second.estimate > 0)
    return Linear(np.where(ok, estimate, np.nan), np.where(ok, var * n * n, np.nan), n)
