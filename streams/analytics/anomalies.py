"""Anomalies: sample-ratio mismatch, rate drops, far-off segments, spikes.

Sample-ratio mismatch under adaptive allocation (derivation). Decision t (of N) shows
variant v with probability π_t(v), fixed before the draw. Let X_t(v) = 1{V_t = v}/π_t(v),
so W_v = Σ_t X_t(v) = ipw_weight. Then E[X_t(v) | past] = 1 for every v: each W_v
estimates the same number N of decisions, however the allocation moved. The
martingale-difference covariance per decision is Var X_t(v) = 1/π_t(v) - 1 and
Cov(X_t(u), X_t(v)) = -1 (u ≠ v, the indicators never both fire), i.e. Cov(W) =
diag(A) - N 11ᵀ with A_v = Σ_t 1/π_t(v). Any contrast cᵀW with cᵀ1 = 0 kills the N 11ᵀ
part, so for the k - 1 contrasts the W_v behave as independent estimates with variances
A_v, and A_v is estimated without bias by Σ_{exposures of v} 1/p² = ipw_weight_sq
(E[1{V=v}/π²] = 1/π). The homogeneity statistic

    Q = Σ_v (W_v - W̄)² / A_v,   W̄ = Σ_v (W_v / A_v) / Σ_v (1 / A_v),

is χ²(k - 1) under no mismatch (martingale CLT). With fixed equal propensities 1/k it is
Neyman's χ² on the exposure counts. Dropped exposures of one variant shrink its W_v below
the others' (it no longer estimates N) and Q grows with N, as fast as the noisiest W allows:
lost exposures of the variant the bandit favours, compared with a starved one whose W is
very noisy, go unnoticed for a long time. As GrowthBook does, the test
needs ≥ 5 per cell: here every variant's exposures (only the chosen variant's propensity is
logged, so the expected count Σ_t π_t(v) is not observable; the observed count stands in
for it). A variant with no exposure at all while the others have `SRM_EMPTY_VARIANT` is
reported apart.

Σ 1/p² is a noisy estimate of A_v when v is starved (a few exposures at the floor carry
all of it; without them it is far too small and Q explodes). Since E[n_v] = Σ_t π_t(v),
Cauchy–Schwarz gives A_v = Σ_t 1/π_t(v) ≥ N² / Σ_t π_t(v) ≈ N² / n_v (equality for a
fixed allocation), so A_v is taken as max(Σ 1/p², N² / n_v) with N the exposures of the
row: never below what the variant's share of the traffic implies.

Measured calibration (`tests/unit/analytics/test_anomalies.py`, 400 seeded runs of 4,000
visits, 3 segments, the default policy): A/A traffic, P(p < 0.05) = 0.043 for the
experiment; a hard A/B (the bandit starves the loser), P(p < 0.05) = 0.083 and P(p < 0.001)
= 0.018: the tail is heavy when a variant is starved, because whether its few floor-level
exposures happened dominates W_v, and Σ_t 1/π_t(v) over the decisions that did not choose
it is not observable from the chosen propensities alone. Hence the threshold p < 1e-4 for
the experiment (GrowthBook uses 1e-3) and 1e-4 / segments per segment (warning only): 1 % of
A/A runs and 2.5 % of those A/B runs raise a false mismatch somewhere. Logging the decisions
per weights version (counts with the full allocation vector) would make the expected
exposures Σ_t π_t(v) exact and the test well calibrated; see the README.

Rate drops compare the period since the oldest `history` snapshot with everything before
it (disjoint decisions). Far-off segments and spikes are plain thresholds, stated where
they are defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from scipy import stats

from streams.analytics import fixed
from streams.analytics.ipw import Cells, hajek_rate, kish, log_ratio_independent

SRM_P: Final = 1e-4
SRM_MIN_PER_VARIANT: Final = 5
SRM_MIN_EFFECTIVE: Final = 30.0
SRM_MIN_SHARE: Final = 0.05
"""A row is tested only when every variant has Kish's effective sample size (Σ1/p)² / Σ1/p²
≥ SRM_MIN_EFFECTIVE and ≥ SRM_MIN_SHARE of the row's exposures. A variant the bandit starved
is shown at tiny propensities, so its Σ1/p is mostly rare huge terms: until they show up it
sits far below its expectation with a variance estimated too small, and the normal
approximation of the χ² test does not hold (a demo run flagged such a segment with p = 4e-36
although no exposure was lost). Such rows are not tested rather than wrongly flagged."""
SRM_EMPTY_VARIANT: Final = 1000
"""Exposures of the other variants at which a variant with none is a mismatch."""
ANOMALY_P: Final = 0.001
"""Threshold of the drop and far-off tests (Bonferroni-divided over what is tested)."""
MIN_DROP: Final = 0.25
"""A drop must also be at least this large (relative) to be reported."""
MIN_PERIOD_CONVERSIONS: Final = 10
FAR_COHENS_H: Final = 0.2
"""A far-off segment must also differ by at least a small effect (Cohen's h ≥ 0.2)."""
SPIKE_MIN: Final = 10
SPIKE_SHARE: Final = 0.05
"""Spike: ≥ SPIKE_MIN new unattributed conversions (expired exposures, dead letters) and
more than SPIKE_SHARE of the conversions (exposures) of the same period."""


@dataclass(frozen=True)
class Anomaly:
    type: str
    severity: str
    message: str
    segment_key: str = "*"
    variant_id: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    observed: float | None = None
    expected: float | None = None
    n: int | None = None

    def report(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "severity": self.severity,
            "segment_key": self.segment_key,
            "message": self.message,
        }
        for name in ("variant_id", "statistic", "p_value", "observed", "expected", "n"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, float) or np.isfinite(value)):
                body[name] = value
        return body


def srm_statistic(w: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q, p-value) of the propensity-weighted SRM test, per row of (rows x variants) sums.

    Variants without exposures in a row are left out of it; NaN where fewer than 2 remain.
    """
    w = np.atleast_2d(np.asarray(w, dtype=float))
    a = np.atleast_2d(np.asarray(w2, dtype=float))
    ok = (w > 0) & (a > 0)
    inverse = np.where(ok, 1.0 / np.where(ok, a, 1.0), 0.0)
    df = ok.sum(axis=1) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = (w * inverse).sum(axis=1) / inverse.sum(axis=1)
        q = (((w - centre[:, None]) ** 2) * inverse).sum(axis=1)
    q = np.where(df >= 1, q, np.nan)
    p = np.where(df >= 1, stats.chi2.sf(q, np.maximum(df, 1)), np.nan)
    return q, p


def sample_ratio_mismatch(cells: Cells) -> list[Anomaly]:
    found: list[Anomaly] = []
    keys = ["*"]
    n, w, w2 = cells.exposures.sum(0)[None, :], cells.w.sum(0)[None, :], cells.w2.sum(0)[None, :]
    levels = [SRM_P]
    if len(cells.segments) > 1:  # one segment is the experiment: tested once, as "*"
        keys += list(cells.segments)
        n, w, w2 = (np.vstack([n, cells.exposures]), np.vstack([w, cells.w]),
                    np.vstack([w2, cells.w2]))  # fmt: skip
        levels += [SRM_P / len(cells.segments)] * len(cells.segments)
    if n.shape[1] < 2:
        return found
    total = n.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        implied = np.where(n > 0, total[:, None] ** 2 / np.where(n > 0, n, 1.0), 0.0)
    q, p = srm_statistic(w, np.maximum(w2, implied))
    empty = (n.min(axis=1) == 0) & (total >= SRM_EMPTY_VARIANT)
    with np.errstate(divide="ignore", invalid="ignore"):
        effective = np.nan_to_num(kish(w, w2))
        share = np.where(total[:, None] > 0, n / np.where(total > 0, total, 1.0)[:, None], 0.0)
    testable = (
        (n.min(axis=1) >= SRM_MIN_PER_VARIANT)
        & (effective.min(axis=1) >= SRM_MIN_EFFECTIVE)
        & (share.min(axis=1) >= SRM_MIN_SHARE)
        & np.isfinite(p)
        & (p < np.array(levels))
    )
    for r in np.nonzero(empty | testable)[0]:
        key = keys[r]
        severity = "critical" if key == "*" else "warning"
        where = "the experiment" if key == "*" else key
        if empty[r]:
            variant = cells.variants[int(np.argmin(n[r]))]
            found.append(
                Anomaly(
                    "sample_ratio_mismatch", "critical",
                    f"{where}: variant {variant} has no exposure while the others have "
                    f"{total[r]:,.0f}; are its exposures reaching the exposures topic?",
                    key, variant, observed=0.0, n=int(total[r]),
                )
            )  # fmt: skip
            continue
        median = float(np.median(w[r]))
        worst = int(np.argmax(np.abs(w[r] - median)))
        found.append(
            Anomaly(
                "sample_ratio_mismatch", severity,
                f"{where}: exposures do not match the logged propensities (χ² = {q[r]:.1f}, "
                f"p = {p[r]:.1g}); {cells.variants[worst]} accounts for "
                f"{w[r, worst]:,.0f} decisions against a median {median:,.0f}. "
                "Exposures of one variant are probably lost or duplicated; "
                "do not trust its rates until this is explained.",
                key, cells.variants[worst], statistic=float(q[r]), p_value=float(p[r]),
                observed=float(w[r, worst]), expected=median, n=int(total[r]),
            )
        )  # fmt: skip
    return found


def rate_drops(cells: Cells, earlier: Cells) -> list[Anomaly]:
    """Rates of the period since `earlier` against everything before it."""
    recent = cells.minus(earlier)
    found: list[Anomaly] = []
    # per variant, over the experiment: inverse-propensity (Hájek) rates of the two periods
    k = len(cells.variants)
    before = hajek_rate(
        earlier.sums.map(lambda a: a.sum(axis=0)), np.full(k, earlier.decisions.sum())
    )
    now = hajek_rate(recent.sums.map(lambda a: a.sum(axis=0)), np.full(k, recent.decisions.sum()))
    change = log_ratio_independent(now, before)
    enough = (recent.conversions.sum(0) >= MIN_PERIOD_CONVERSIONS) & (
        earlier.conversions.sum(0) >= MIN_PERIOD_CONVERSIONS
    )
    tests = int(enough.sum()) + len(cells.segments)
    level = ANOMALY_P / max(1, tests)
    p = stats.norm.cdf(change.t)
    for j in np.nonzero(enough)[0]:
        relative = float(np.expm1(change.estimate[j]))
        if np.isfinite(p[j]) and p[j] < level and relative <= -MIN_DROP:
            found.append(
                Anomaly(
                    "rate_drop", "warning",
                    f"{cells.variants[j]} converts {now.estimate[j]:.2%} since "
                    f"{recent.decisions.sum():,.0f} decisions ago against "
                    f"{before.estimate[j]:.2%} before ({relative:+.0%}, p = {p[j]:.1g}).",
                    "*", cells.variants[j], statistic=float(change.t[j]), p_value=float(p[j]),
                    observed=float(now.estimate[j]), expected=float(before.estimate[j]),
                    n=int(recent.decisions.sum()),
                )
            )  # fmt: skip
    # per segment, every variant together: the rate it really had
    index = {key: i for i, key in enumerate(earlier.segments)}
    for i, key in enumerate(cells.segments):
        if key not in index:
            continue
        c1, n1 = recent.conversions[i].sum(), recent.exposures[i].sum()
        c0, n0 = earlier.conversions[index[key]].sum(), earlier.exposures[index[key]].sum()
        if min(c1, c0) < MIN_PERIOD_CONVERSIONS:
            continue
        z, _ = fixed.two_proportion_z(c1, n1, c0, n0)
        one_sided = float(stats.norm.cdf(z))
        relative = float((c1 / n1) / (c0 / n0) - 1.0)
        if one_sided < level and relative <= -MIN_DROP:
            found.append(
                Anomaly(
                    "rate_drop", "warning",
                    f"{key}: converts {c1 / n1:.2%} over its last {n1:,.0f} exposures against "
                    f"{c0 / n0:.2%} before ({relative:+.0%}, p = {one_sided:.1g}).",
                    key, statistic=float(z), p_value=one_sided, observed=float(c1 / n1),
                    expected=float(c0 / n0), n=int(n1),
                )
            )  # fmt: skip
    return found


def far_segments(cells: Cells) -> list[Anomaly]:
    """Segments whose rate (all variants) is far from the rest of the experiment."""
    n, c = cells.exposures.sum(1), cells.conversions.sum(1)
    if len(n) < 3:
        return []
    rest_n, rest_c = n.sum() - n, c.sum() - c
    z, p = fixed.two_proportion_z(c, n, rest_c, rest_n)
    h = fixed.cohens_h(fixed.rate(c, n), fixed.rate(rest_c, rest_n))
    level = ANOMALY_P / len(n)
    found = []
    for i in np.nonzero((p < level) & (np.abs(h) >= FAR_COHENS_H))[0]:
        found.append(
            Anomaly(
                "far_segment", "info",
                f"{cells.segments[i]}: converts {c[i] / n[i]:.2%} against "
                f"{rest_c[i] / rest_n[i]:.2%} in the rest of the experiment "
                f"(Cohen's h = {h[i]:+.2f}, n = {n[i]:,.0f}); "
                "check its traffic source before reading its lifts.",
                cells.segments[i], statistic=float(z[i]), p_value=float(p[i]),
                observed=float(c[i] / n[i]), expected=float(rest_c[i] / rest_n[i]), n=int(n[i]),
            )
        )  # fmt: skip
    return found


def spike(kind: str, new: float, base: float, what: str) -> Anomaly | None:
    """`new` events of `kind` in a period with `base` events they should be a share of."""
    if new >= SPIKE_MIN and new > SPIKE_SHARE * max(base, 0.0):
        share = new / base if base > 0 else float("inf")
        shown = f"{share:.0%} of" if np.isfinite(share) else "with no"
        return Anomaly(
            kind, "warning",
            f"{new:,.0f} {what} in the last period, {shown} {base:,.0f} expected events; "
            "check the producers and the dead-letter topic.",
            observed=float(new), expected=float(base), n=int(new),
        )  # fmt: skip
    return None
