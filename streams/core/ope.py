"""Off-policy evaluation: what would a target policy have earned on logged traffic?

Every logged decision records the propensity (probability the logging policy
gave to the variant it showed). Reweighting each reward by
w = target probability / logging propensity gives

* IPS: mean(w r), unbiased when propensities are right and never zero;
* SNIPS: sum(w r) / sum(w), self-normalised, slightly biased but with far
  smaller variance when weights are large.

Intervals are normal approximations: the sample variance of the per-row terms
for IPS, the delta method for SNIPS (the ratio of two means).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special


@dataclass(frozen=True)
class OffPolicyEstimate:
    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    n: int


def _logged_arrays(
    rewards: Sequence[float] | np.ndarray,
    logging_propensities: Sequence[float] | np.ndarray,
    target_probabilities: Sequence[float] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    reward = np.asarray(rewards, dtype=float)
    propensity = np.asarray(logging_propensities, dtype=float)
    target = np.asarray(target_probabilities, dtype=float)
    if not reward.ndim == propensity.ndim == target.ndim == 1:
        message = "rewards, propensities and target probabilities must be 1-D"
        raise ValueError(message)
    if not reward.size == propensity.size == target.size:
        message = (
            f"rewards, propensities and target probabilities must have the same length, "
            f"got {reward.size}, {propensity.size}, {target.size}"
        )
        raise ValueError(message)
    if reward.size < 2:
        message = f"need at least 2 logged decisions for an interval, got {reward.size}"
        raise ValueError(message)
    if np.any(~(propensity > 0.0)) or np.any(propensity > 1.0):
        message = "logging propensities must be in (0, 1]"
        raise ValueError(message)
    if np.any(~(target >= 0.0)) or np.any(target > 1.0):
        message = "target probabilities must be in [0, 1]"
        raise ValueError(message)
    if not np.all(np.isfinite(reward)):
        message = "rewards must be finite"
        raise ValueError(message)
    return reward, target / propensity


def _interval(estimate: float, std_error: float, n: int, confidence: float) -> OffPolicyEstimate:
    if not 0.0 < confidence < 1.0:
        message = f"confidence must be in (0, 1), got {confidence!r}"
        raise ValueError(message)
    z = float(special.ndtri(0.5 + confidence / 2.0))
    return OffPolicyEstimate(
        estimate, std_error, estimate - z * std_error, estimate + z * std_error, n
    )


def target_probability_of_actions(
    target_probabilities: np.ndarray, actions: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Pick, per logged row, the target policy's probability of the logged action.

    `target_probabilities` has one row per logged decision, one column per variant.
    """
    matrix = np.asarray(target_probabilities, dtype=float)
    chosen = np.asarray(actions, dtype=int)
    return np.asarray(matrix[np.arange(chosen.size), chosen])


def ips_estimate(
    rewards: Sequence[float] | np.ndarray,
    logging_propensities: Sequence[float] | np.ndarray,
    target_probabilities: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> OffPolicyEstimate:
    """Inverse-propensity estimate of the target policy's mean reward per visit."""
    reward, weight = _logged_arrays(rewards, logging_propensities, target_probabilities)
    terms = weight * reward
    n = terms.size
    return _interval(float(terms.mean()), float(terms.std(ddof=1) / np.sqrt(n)), n, confidence)


def snips_estimate(
    rewards: Sequence[float] | np.ndarray,
    logging_propensities: Sequence[float] | np.ndarray,
    target_probabilities: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> OffPolicyEstimate:
    """Self-normalised IPS; delta-method standard error of sum(w r) / sum(w).

    Var(ratio) ~ sum(w_i^2 (r_i - estimate)^2) / sum(w)^2 (first-order Taylor
    expansion of mean(w r) / mean(w) around its expectation).
    """
    reward, weight = _logged_arrays(rewards, logging_propensities, target_probabilities)
    total_weight = float(weight.sum())
    if total_weight <= 0.0:
        message = "the target policy gives zero probability to every logged action"
        raise ValueError(message)
    estimate = float((weight * reward).sum() / total_weight)
    n = reward.size
    residual = weight * (reward - estimate)
    # n / (n - 1): the same small-sample correction as the IPS sample variance.
    variance = float((residual**2).sum()) / total_weight**2 * n / (n - 1)
    return _interval(estimate, float(np.sqrt(variance)), n, confidence)
