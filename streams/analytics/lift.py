"""Lifts of one snapshot: every number with its n and interval, decision-grade flags.

Two families of hypotheses, corrected together with e-BH (`sequential.e_bh`):

* segment lift, per (segment s, variant v): μ_{s,v} / μ_v - 1, the segment's rate of v
  against v's rate over the whole experiment, both inverse-propensity weighted (Hájek:
  Σ y/p / Σ 1/p over the exposures, `ipw.hajek_rate`; `ipw.log_ratio_part_to_whole`).
  Flagged ones are high performers or underperformers.
* variant comparisons, per segment and for the experiment (`*`), per pair (a, b):
  μ_a / μ_b - 1 on the same decisions (`ipw.log_ratio_within`).

A hypothesis is tested only when each side has `MIN_EXPOSURES` exposures and
`MIN_CONVERSIONS` conversions (the normal approximation behind the sequences needs
them); below that its e-value is 0, which keeps e-BH valid.

Beside each, the fixed-sample numbers on the raw counts (Wilson interval, pooled
two-proportion z-test, Cohen's h, Benjamini–Hochberg q-value across segments): familiar,
but valid only at one pre-planned look and biased by the allocation (`fixed.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Final

import numpy as np

from streams.analytics import fixed, sequential
from streams.analytics.ipw import (
    Cells,
    Linear,
    Sums,
    hajek_rate,
    log_ratio_part_to_whole,
    log_ratio_within,
)

MIN_EXPOSURES: Final = 100
"""Exposures each side of a comparison needs before it can be decision-grade."""
MIN_CONVERSIONS: Final = 10
"""Conversions each side of a comparison needs before it can be decision-grade."""


@dataclass(frozen=True, eq=False)
class Comparison:
    """Vectors over the hypotheses of one family (same length everywhere)."""

    estimate: Linear  # on the log scale
    guarded: np.ndarray  # bool: passes the minimum-sample guards
    naive_z: np.ndarray
    naive_p: np.ndarray
    naive_q: np.ndarray
    cohens_h: np.ndarray


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything a report needs from one snapshot (arrays, no documents yet)."""

    cells: Cells
    alpha: float
    rate: Linear  # per (segment, variant), Hájek rate
    global_rate: Linear  # per variant, Hájek rate over all decisions
    segment_lift: Comparison  # flattened (segment, variant), row-major
    pairs: tuple[tuple[int, int], ...]  # variant index pairs (a, b), a < b
    pair_lift: Comparison  # flattened (segment or global last, pair), row-major
    flagged_segment: np.ndarray  # (S, k) bool
    flagged_pair: np.ndarray  # (S + 1, P) bool
    hypotheses: int
    flagged: int

    @property
    def interval_level(self) -> float:
        """Level of the lift intervals: α R / m (e-BY), α / m before any flag."""
        return self.alpha * max(self.flagged, 1) / max(self.hypotheses, 1)

    def lift_interval(self, estimate: Linear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lift, low, high) on the relative scale, at `interval_level`, always valid."""
        half = sequential.boundary(estimate.n, self.interval_level, self.alpha)
        half = half * estimate.standard_error
        centre = estimate.estimate
        return np.expm1(centre), np.expm1(centre - half), np.expm1(centre + half)

    def rate_interval(self, rate: Linear) -> tuple[np.ndarray, np.ndarray]:
        """Per-rate always-valid interval at level α (not corrected for multiplicity)."""
        half = sequential.boundary(rate.n, self.alpha, self.alpha) * rate.standard_error
        return np.clip(rate.estimate - half, 0.0, 1.0), np.clip(rate.estimate + half, 0.0, 1.0)


def _guard(exposures: np.ndarray, conversions: np.ndarray) -> np.ndarray:
    return (exposures >= MIN_EXPOSURES) & (conversions >= MIN_CONVERSIONS)


def _bh_by_column(p: np.ndarray) -> np.ndarray:
    """BH across segments (rows), one family per column."""
    q = np.full(p.shape, np.nan)
    for j in range(p.shape[1]):
        q[:, j] = fixed.bh_q_values(p[:, j])
    return q


def analyse(cells: Cells, alpha: float = 0.05) -> Analysis:
    """Estimates, intervals and decision-grade flags of one snapshot; never raises."""
    s_count, k = cells.exposures.shape
    decisions = cells.decisions[:, None] * np.ones((1, k))
    total_decisions = float(cells.decisions.sum())
    sums = cells.sums
    rate = hajek_rate(sums, decisions)
    whole = sums.map(lambda a: a.sum(axis=0))
    global_rate = hajek_rate(whole, np.full(k, total_decisions))

    # segment lift: (segment, variant) against the variant over all traffic
    part = log_ratio_part_to_whole(
        sums, whole.map(lambda a: a[None, :]), np.full((1, k), total_decisions)
    )
    n_v, c_v = cells.exposures.sum(axis=0), cells.conversions.sum(axis=0)
    rest_n, rest_c = n_v[None, :] - cells.exposures, c_v[None, :] - cells.conversions
    seg_guard = _guard(cells.exposures, cells.conversions) & _guard(rest_n, rest_c)
    z, p = fixed.two_proportion_z(cells.conversions, cells.exposures, rest_c, rest_n)
    h = fixed.cohens_h(fixed.rate(cells.conversions, cells.exposures), fixed.rate(c_v, n_v))
    segment_lift = Comparison(
        _flat(part), seg_guard.ravel(), z.ravel(), p.ravel(), _bh_by_column(p).ravel(), h.ravel()
    )

    # variant pairs, per segment and for the experiment (last row)
    pairs = tuple(combinations(range(k), 2))
    rows_n = np.vstack([cells.exposures, n_v[None, :]])
    rows_c = np.vstack([cells.conversions, c_v[None, :]])
    rows = Sums.stack([sums, whole.map(lambda a: a[None, :])])
    rows_d = np.append(cells.decisions, total_decisions)
    a = np.array([pair[0] for pair in pairs], dtype=int)
    b = np.array([pair[1] for pair in pairs], dtype=int)
    within = log_ratio_within(
        rows.map(lambda s: s[:, a]), rows.map(lambda s: s[:, b]), rows_d[:, None] * np.ones(len(a))
    )
    pair_guard = _guard(rows_n[:, a], rows_c[:, a]) & _guard(rows_n[:, b], rows_c[:, b])
    pz, pp = fixed.two_proportion_z(rows_c[:, a], rows_n[:, a], rows_c[:, b], rows_n[:, b])
    pq = np.vstack([_bh_by_column(pp[:-1]), fixed.bh_q_values(pp[-1])[None, :]])
    ph = fixed.cohens_h(
        fixed.rate(rows_c[:, a], rows_n[:, a]), fixed.rate(rows_c[:, b], rows_n[:, b])
    )
    pair_lift = Comparison(
        _flat(within), pair_guard.ravel(), pz.ravel(), pp.ravel(), pq.ravel(), ph.ravel()
    )

    log_e = np.concatenate([_log_e(segment_lift, alpha), _log_e(pair_lift, alpha)])
    rejected = sequential.e_bh(log_e, alpha)
    cut = s_count * k
    return Analysis(
        cells=cells,
        alpha=alpha,
        rate=rate,
        global_rate=global_rate,
        segment_lift=segment_lift,
        pairs=pairs,
        pair_lift=pair_lift,
        flagged_segment=rejected[:cut].reshape(s_count, k),
        flagged_pair=rejected[cut:].reshape(s_count + 1, len(pairs)),
        hypotheses=int(log_e.size),
        flagged=int(rejected.sum()),
    )


def _flat(linear: Linear) -> Linear:
    shape = np.shape(linear.estimate)
    return Linear(
        np.ravel(linear.estimate),
        np.ravel(linear.influence_ss),
        np.ravel(np.broadcast_to(linear.n, shape)),
    )


def _log_e(comparison: Comparison, alpha: float) -> np.ndarray:
    t = comparison.estimate.t
    usable = comparison.guarded & np.isfinite(t)
    return np.where(
        usable, sequential.log_e_value(comparison.estimate.n, np.nan_to_num(t), alpha), -np.inf
    )
