"""Always-valid inference: asymptotic confidence sequences and their e-values.

Reports are recomputed every few seconds while the experiment runs. A fixed-sample test
looked at that often flags far more than α of null effects (each look is another chance),
so the decision-grade flags here come from confidence sequences, which hold at every look
at once:

* Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas (2023), "Time-uniform central limit theory
  and asymptotic confidence sequences" (Annals of Statistics 2024, arXiv:2103.06476),
  Theorem 2.2: for a mean estimated from N observations with variance estimate σ̂²,

      θ̂ ± σ̂/√N · sqrt( 2 (Nρ² + 1) / (Nρ²) · log( sqrt(Nρ² + 1) / α ) )

  covers θ at every N simultaneously with probability → 1 - α. It is Robbins' normal
  mixture boundary applied to the standardised sum, and holds for martingale differences
  (Section 3), which is what inverse-propensity scores under adaptive allocation are: the
  allocation of a decision is fixed before its draw. Intervals here are built from an
  asymptotically linear estimator: `estimate`, `influence_ss` = Σ φ_t² (the squared
  influence of each observation, in units of the estimate) and `n` observations, so
  σ̂²/N = influence_ss / n².
* ρ is fixed in advance: ρ² = (-2 log α + log(-2 log α + 1)) / N* makes the sequence
  tightest at N* observations (the paper's Eq. for ρ_opt); N* = `DESIGN_N`.
* The same mixture is an e-process (Ville's inequality), e = (1 + Nρ²)^(-1/2) ·
  exp(Nρ² T² / (2 (1 + Nρ²))) with T = θ̂ / (σ̂/√N) at the null θ = 0. Many hypotheses are
  corrected with e-BH (Wang & Ramdas 2022, "False discovery rate control with e-values",
  JRSS-B): it controls the false discovery rate at any stopping time, so under the global
  null P(any flag at any look) ≤ α. The intervals shown beside the flags are the sequences
  at level α R / m (R flags out of m hypotheses): one excludes 0 exactly when its
  hypothesis is flagged.

The guarantee is asymptotic: with few observations (rare conversions, large 1/p weights)
the normal approximation is poor, so callers gate these with minimum-sample guards.
`bandit-stream bench aa` measures what the combination achieves.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

DESIGN_N: Final = 10_000
"""Observations at which the confidence sequences are tightest (ρ is fixed by it)."""


def rho_squared(alpha: float, design_n: float = DESIGN_N) -> float:
    """ρ² that makes the two-sided level-α sequence tightest at `design_n` observations."""
    c = -2.0 * math.log(alpha) + math.log(-2.0 * math.log(alpha) + 1.0)
    return c / design_n


def boundary(n: np.ndarray, level: np.ndarray | float, alpha: float) -> np.ndarray:
    """Multiplier m with half-width = m · σ̂/√N: |T| < m holds at every N w.p. ≥ 1 - level.

    ρ is tuned for `alpha` (the family's level); `level` may be smaller (corrections).
    """
    x = np.asarray(n, dtype=float) * rho_squared(alpha)
    x = np.maximum(x, 1e-12)
    level = np.clip(np.asarray(level, dtype=float), 1e-300, 1.0)
    return np.sqrt(2.0 * (x + 1.0) / x * (np.log(1.0 / level) + 0.5 * np.log1p(x)))


def log_e_value(n: np.ndarray, t: np.ndarray, alpha: float) -> np.ndarray:
    """log of the mixture e-process at the null θ = 0, T = θ̂ / (σ̂/√N)."""
    x = np.asarray(n, dtype=float) * rho_squared(alpha)
    t = np.asarray(t, dtype=float)
    return -0.5 * np.log1p(x) + x * t * t / (2.0 * (1.0 + x))


def e_bh(log_e: np.ndarray, alpha: float) -> np.ndarray:
    """e-BH: which hypotheses to reject (bool array); NaN e-values count, never reject.

    Reject the k̂ largest e-values, k̂ = max{k : e_(k) ≥ m / (α k)} (m = all hypotheses).
    """
    values = np.where(np.isfinite(log_e), log_e, -np.inf)
    m = values.size
    rejected = np.zeros(m, dtype=bool)
    if m == 0:
        return rejected
    order = np.argsort(-values, kind="stable")
    ranks = np.arange(1, m + 1)
    passes = values[order] >= np.log(m / (alpha * ranks))
    if passes.any():
        k = int(np.nonzero(passes)[0].max()) + 1
        rejected[order[:k]] = True
    return rejected
