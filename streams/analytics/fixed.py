"""Fixed-sample statistics: valid at ONE pre-planned look, shown for reference.

These are the textbook numbers analysts expect beside a rate: the Wilson score interval,
the pooled two-proportion z-test, Cohen's h and Benjamini–Hochberg q-values across
segments (`scipy.stats.false_discovery_control`). Looked at every few seconds while the
allocation moves they flag far more than α of null effects (`bandit-stream bench aa`
measures how many), and raw counts pooled over periods with different allocations are
biased, so no decision is taken from them: see `sequential.py` and `ipw.py`.

All functions are vectorised over numpy arrays and total: empty samples give NaN, never
an exception.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def rate(conversions: np.ndarray, exposures: np.ndarray) -> np.ndarray:
    return _safe_div(conversions, exposures)


def wilson_interval(
    conversions: np.ndarray, exposures: np.ndarray, z: float = Z95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (Wilson 1927); NaN where there are no exposures."""
    n = np.asarray(exposures, dtype=float)
    p = rate(conversions, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        denominator = 1.0 + z * z / n
        centre = (p + z * z / (2.0 * n)) / denominator
        half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def two_proportion_z(
    c1: np.ndarray, n1: np.ndarray, c2: np.ndarray, n2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled two-proportion z-test of p1 = p2: (z, two-sided p-value); NaN when undefined."""
    c1, n1, c2, n2 = (np.asarray(a, dtype=float) for a in (c1, n1, c2, n2))
    pooled = rate(c1 + c2, n1 + n2)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
        z = np.where(se > 0, (rate(c1, n1) - rate(c2, n2)) / np.where(se > 0, se, 1.0), np.nan)
    return z, 2.0 * stats.norm.sf(np.abs(z))


def cohens_h(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """Cohen's h = 2 asin √p1 - 2 asin √p2 (0.2 small, 0.5 medium, 0.8 large)."""
    p1 = np.clip(np.asarray(p1, dtype=float), 0.0, 1.0)
    p2 = np.clip(np.asarray(p2, dtype=float), 0.0, 1.0)
    return 2.0 * np.arcsin(np.sqrt(p1)) - 2.0 * np.arcsin(np.sqrt(p2))


def bh_q_values(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values over the finite entries; NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = stats.false_discovery_control(np.clip(p[finite], 0.0, 1.0), method="bh")
    return q
