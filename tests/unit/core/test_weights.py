"""P(best) by quadrature: exactness, Monte Carlo agreement within the stated error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from streams.core.weights import (
    MIN_RELIABLE_PARAMETER,
    QUADRATURE_ABS_ERROR,
    apply_floor,
    prob_best,
)

pytestmark = pytest.mark.unit

MONTE_CARLO_DRAWS = 2_000_000


def _beta_parameters(variants: int) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Posteriors from a few to 10^7 observations, rates 0.1 % to 50 %, alpha, beta >= 0.1."""
    one = st.tuples(st.floats(-1.0, 7.0), st.floats(-3.0, -0.3)).map(
        lambda pair: (10 ** pair[0], 10 ** pair[1])
    )
    return st.lists(one, min_size=variants, max_size=variants).map(
        lambda rows: (
            np.maximum([n * p for n, p in rows], MIN_RELIABLE_PARAMETER),
            np.maximum([n * (1 - p) for n, p in rows], MIN_RELIABLE_PARAMETER),
        )
    )


def _adaptive_reference(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, float]:
    """P(best) by scipy's adaptive quadrature with exact `betainc` CDFs (slow, independent)."""
    mean = special.digamma(alpha) - special.digamma(beta)
    sd = np.sqrt(special.polygamma(1, alpha) + special.polygamma(1, beta))
    marks = np.concatenate(
        [m + s * np.array([-6, -3, -1.5, 0, 1.5, 3, 6]) for m, s in zip(mean, sd, strict=True)]
    )
    values, errors = [], []
    for i in range(alpha.size):

        def integrand(z: float, i: int = i) -> float:
            x = special.expit(z)
            log_density = (
                alpha[i] * z
                - (alpha[i] + beta[i]) * np.logaddexp(0.0, z)
                - special.betaln(alpha[i], beta[i])
            )
            others = np.prod(
                [special.betainc(alpha[j], beta[j], x) for j in range(alpha.size) if j != i]
            )
            return float(np.exp(log_density) * others)

        low, high = mean[i] - 60 * sd[i] - 40, mean[i] + 60 * sd[i] + 40
        inside = sorted({float(p) for p in marks if low < p < high})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", integrate.IntegrationWarning)
            value, error = integrate.quad(
                integrand, low, high, points=inside, limit=1000, epsabs=1e-13, epsrel=1e-11
            )
        values.append(value)
        errors.append(error)
    return np.array(values), float(max(errors))


def _monte_carlo(alpha: np.ndarray, beta: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    draws = rng.beta(alpha, beta, size=(MONTE_CARLO_DRAWS, alpha.size))
    return np.bincount(draws.argmax(axis=1), minlength=alpha.size) / MONTE_CARLO_DRAWS


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [
        ([11.0, 14.0, 9.0], [191.0, 188.0, 193.0]),  # a few hundred visits each
        ([5_001.0, 5_080.0], [95_001.0, 94_922.0]),  # 10^5 observations: very narrow
        ([2.0, 501.0, 41.0], [40.0, 9_501.0, 760.0]),  # one wide and one narrow
        ([0.5, 3.0, 0.8], [9.0, 60.0, 20.0]),  # alpha < 1 (tempered, near-zero rates)
    ],
)
def test_quadrature_agrees_with_monte_carlo_within_the_stated_error(
    alpha: list[float], beta: list[float]
) -> None:
    a, b = np.array(alpha), np.array(beta)
    exact = prob_best(a, b)
    sampled = _monte_carlo(a, b, seed=20241)
    # Tolerance derived, not tuned: the quadrature's stated error plus 4 Monte Carlo
    # standard errors sqrt(p (1 - p) / N) of a binomial proportion.
    tolerance = QUADRATURE_ABS_ERROR + 4 * np.sqrt(exact * (1 - exact) / MONTE_CARLO_DRAWS)
    assert np.all(np.abs(exact - sampled) <= tolerance), (exact, sampled, tolerance)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 4).flatmap(_beta_parameters))
def test_quadrature_agrees_with_adaptive_quadrature(
    parameters: tuple[np.ndarray, np.ndarray],
) -> None:
    alpha, beta = parameters
    reference, reference_error = _adaptive_reference(alpha, beta)
    # The reference is only as good as its own error estimate and its sum.
    reference_slack = reference_error + abs(reference.sum() - 1.0)
    assert (
        np.abs(prob_best(alpha, beta) - reference).max() <= QUADRATURE_ABS_ERROR + reference_slack
    )


@given(st.integers(1, 10).flatmap(_beta_parameters))
def test_weights_are_probabilities(parameters: tuple[np.ndarray, np.ndarray]) -> None:
    weights = prob_best(*parameters)
    assert np.all(weights >= 0)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)


def test_identical_posteriors_split_evenly_and_order_does_not_matter() -> None:
    assert np.allclose(
        prob_best(np.full(5, 30.0), np.full(5, 900.0)), 0.2, atol=QUADRATURE_ABS_ERROR
    )
    alpha, beta = np.array([10.0, 30.0, 20.0]), np.array([400.0, 500.0, 450.0])
    order = np.array([2, 0, 1])
    assert np.allclose(prob_best(alpha, beta)[order], prob_best(alpha[order], beta[order]))
    assert prob_best(np.array([3.0]), np.array([4.0])).tolist() == [1.0]


def test_a_clearly_better_variant_takes_everything() -> None:
    weights = prob_best(np.array([100.0, 1_000.0]), np.array([9_900.0, 9_000.0]))
    assert weights[1] == pytest.approx(1.0, abs=QUADRATURE_ABS_ERROR)


@pytest.mark.parametrize(
    ("alpha", "beta", "message"),
    [
        ([1.0, 0.0], [1.0, 1.0], "positive"),
        ([1.0], [1.0, 1.0], "same length"),
        ([np.inf], [1.0], "finite"),
    ],
)
def test_invalid_parameters_are_rejected(
    alpha: list[float], beta: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        prob_best(np.array(alpha), np.array(beta))


@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=10).filter(lambda p: sum(p) > 0),
    st.floats(0, 0.999),
)
def test_floor_keeps_every_variant_above_it_and_the_sum_at_one(
    raw: list[float], share: float
) -> None:
    probabilities = np.array(raw) / sum(raw)
    floor = share / len(raw)
    floored = apply_floor(probabilities, floor)
    assert np.all(floored >= floor)
    assert floored.sum() == pytest.approx(1.0, abs=1e-12)


def test_floor_must_leave_room_for_the_policy() -> None:
    with pytest.raises(ValueError, match="below 1/4"):
        apply_floor(np.full(4, 0.25), 0.25)
