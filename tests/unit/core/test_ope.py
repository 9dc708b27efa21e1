"""Off-policy evaluation: intervals that cover the truth as often as they claim."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from streams.core.ope import (
    OffPolicyEstimate,
    ips_estimate,
    snips_estimate,
    target_probability_of_actions,
)

pytestmark = pytest.mark.unit

RATES = np.array([0.05, 0.10, 0.15])  # true conversion rate of each variant
LOGGING = np.array([0.5, 0.3, 0.2])  # the policy that produced the logs
TARGET = np.array([0.1, 0.2, 0.7])  # the policy we want to evaluate
TRUE_VALUE = float(TARGET @ RATES)  # 0.13 conversions per visit
ROWS = 4_000

Estimator = Callable[..., OffPolicyEstimate]


def _logs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    actions = rng.choice(3, size=ROWS, p=LOGGING)
    rewards = (rng.random(ROWS) < RATES[actions]).astype(float)
    target = target_probability_of_actions(np.tile(TARGET, (ROWS, 1)), actions)
    return rewards, LOGGING[actions], target


@pytest.mark.parametrize("estimator", [ips_estimate, snips_estimate])
def test_interval_contains_the_true_value(estimator: Estimator) -> None:
    result = estimator(*_logs(seed=2024))
    assert isinstance(result, OffPolicyEstimate)
    assert result.n == ROWS
    assert result.ci_low < result.estimate < result.ci_high
    # Not "the 95 % interval contains the truth" for one seed (a correct estimator fails that
    # 5 % of the time, a biased one often passes): the estimate is within 5 of its standard
    # errors of the truth (fails by chance with probability < 6e-7), and the standard error
    # is the one of the known logging process: Var(w r) = sum_a logging_a (target_a /
    # logging_a)^2 rate_a - value^2 for IPS, sum_a logging_a w_a^2 rate_a (1 - ...) for the
    # ratio. The reported one is a sample sd of 4,000 skewed terms: its relative sd,
    # sqrt((kurtosis - 1) / 4n), is 4 % here (IPS; 3.3 % SNIPS), so 15 % is > 3.5 of them.
    assert abs(result.estimate - TRUE_VALUE) <= 5 * result.std_error
    weights = TARGET / LOGGING
    if estimator is ips_estimate:
        variance = float(LOGGING @ (weights**2 * RATES)) - TRUE_VALUE**2
    else:
        variance = float(LOGGING @ (weights**2 * (RATES - 2 * RATES * TRUE_VALUE + TRUE_VALUE**2)))
    assert result.std_error == pytest.approx(math.sqrt(variance / ROWS), rel=0.15)


@pytest.mark.parametrize("estimator", [ips_estimate, snips_estimate])
def test_95_percent_intervals_cover_the_truth_95_percent_of_the_time(
    estimator: Estimator,
) -> None:
    repetitions = 200
    covered = 0
    for seed in range(repetitions):
        result = estimator(*_logs(seed=10_000 + seed))
        covered += result.ci_low <= TRUE_VALUE <= result.ci_high
    # If the nominal 95 % were exact, the number of covering runs would be
    # binomial(200, 0.95): sd sqrt(0.95 * 0.05 / 200) = 0.0154 in share. Allow 3 sd
    # (+-0.046), so an estimator whose intervals are too narrow (or too wide) by
    # that much fails, while a correct one fails by chance with probability < 0.3 %.
    tolerance = 3 * math.sqrt(0.95 * 0.05 / repetitions)
    assert abs(covered / repetitions - 0.95) <= tolerance


def test_on_policy_logs_give_the_plain_mean() -> None:
    rewards = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    propensities = np.full(5, 0.4)
    ips = ips_estimate(rewards, propensities, propensities)
    snips = snips_estimate(rewards, propensities, propensities)
    assert ips.estimate == pytest.approx(0.6)
    assert snips.estimate == pytest.approx(0.6)
    # With all weights 1 both reduce to the sample mean and its standard error.
    assert ips.std_error == pytest.approx(snips.std_error)
    assert ips.std_error == pytest.approx(rewards.std(ddof=1) / math.sqrt(5))


def test_snips_is_invariant_to_scaling_the_target() -> None:
    rewards, propensities, target = _logs(seed=3)
    assert snips_estimate(rewards, propensities, target).estimate == pytest.approx(
        snips_estimate(rewards, propensities, target / 2).estimate
    )


@pytest.mark.parametrize(
    ("rewards", "propensities", "target", "message"),
    [
        ([1.0, 0.0], [0.5, 0.0], [0.5, 0.5], "propensities"),
        ([1.0, 0.0], [0.5, 0.5], [0.5, 1.5], "target probabilities"),
        ([1.0, 0.0], [0.5], [0.5, 0.5], "same length"),
        ([1.0], [0.5], [0.5], "at least 2"),
        ([1.0, np.nan], [0.5, 0.5], [0.5, 0.5], "finite"),
    ],
)
def test_invalid_logs_are_rejected(
    rewards: list[float], propensities: list[float], target: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ips_estimate(rewards, propensities, target)


def test_snips_needs_some_overlap_and_a_valid_confidence() -> None:
    with pytest.raises(ValueError, match="zero probability"):
        snips_estimate([1.0, 0.0], [0.5, 0.5], [0.0, 0.0])
    with pytest.raises(ValueError, match="confidence"):
        ips_estimate([1.0, 0.0], [0.5, 0.5], [0.5, 0.5], confidence=1.0)
