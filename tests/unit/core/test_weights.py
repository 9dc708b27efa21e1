"""P(best) by quadrature: exactness, Monte Carlo agreement within the stated error; the floor."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from streams.core.weights import (
    MIN_RELIABLE_ALPHA,
    MIN_RELIABLE_BETA,
    QUADRATURE_ABS_ERROR,
    apply_floor,
    prob_best,
)

pytestmark = pytest.mark.unit

MONTE_CARLO_DRAWS = 2_000_000


def _beta_parameters(variants: int) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Posteriors from a few to 10^7 observations, rates 0.01 % to 50 %, down to the
    smallest parameters the stated error covers (alpha 0.005, beta 0.1)."""
    one = st.tuples(st.floats(-1.0, 7.0), st.floats(-4.0, -0.3)).map(
        lambda pair: (10 ** pair[0], 10 ** pair[1])
    )
    return st.lists(one, min_size=variants, max_size=variants).map(
        lambda rows: (
            np.maximum([n * p for n, p in rows], MIN_RELIABLE_ALPHA),
            np.maximum([n * (1 - p) for n, p in rows], MIN_RELIABLE_BETA),
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
        ([0.02, 1.02], [1_000.0, 1_000.0]),  # rare conversions: a pooled prior at 1 %
        ([0.005, 0.3, 2.0], [400.0, 900.0, 1_500.0]),  # the smallest alpha covered
    ],
)
def test_quadrature_agrees_with_monte_carlo_within_the_stated_error(
    alpha: list[float], beta: list[float]
) -> None:
    a, b = np.array(alpha), np.array(beta)
    exact = prob_best(a, b)
    sampled = _monte_carlo(a, b, seed=20241)
    # Tolerance derived, not tuned: the quadrature's stated error plus 5 Monte Carlo
    # standard errors sqrt(p (1 - p) / N) of a binomial proportion (the count of draws in
    # which variant i is highest is binomial(N, p_i)); a correct p_i fails by chance with
    # probability < 6e-7 per entry.
    tolerance = QUADRATURE_ABS_ERROR + 5 * np.sqrt(exact * (1 - exact) / MONTE_CARLO_DRAWS)
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


def _exact_two_variants(alpha: tuple[float, int], beta: tuple[float, float]) -> float:
    """P(X_1 > X_0) for X_i ~ Beta(alpha_i, beta_i), integer alpha_1: the closed form

    sum_{i < alpha_1} B(alpha_0 + i, beta_0 + beta_1)
                      / ((beta_1 + i) B(1 + i, beta_1) B(alpha_0, beta_0))

    (Cook 2005; Miller 2015), summed in log space. Independent of the quadrature and of
    its renormalisation."""
    a0, a1 = alpha
    b0, b1 = beta
    i = np.arange(a1)
    terms = (
        special.betaln(a0 + i, b0 + b1)
        - np.log(b1 + i)
        - special.betaln(1 + i, b1)
        - special.betaln(a0, b0)
    )
    return float(np.exp(terms).sum())


@given(
    st.tuples(st.integers(1, 60), st.integers(1, 60)),
    st.tuples(st.integers(1, 5_000), st.integers(1, 5_000)),
)
def test_two_variants_match_the_closed_form(alpha: tuple[int, int], beta: tuple[int, int]) -> None:
    # Each entry is checked against an exact value, so an error the renormalisation would
    # hide (a raw sum off 1, one variant's integral wrong) fails here. The closed form's own
    # round-off (up to 60 terms of size <= 1, each with relative error ~1e-13) is < 1e-11.
    weights = prob_best(np.array(alpha, dtype=float), np.array(beta, dtype=float))
    exact = _exact_two_variants(alpha, beta)
    assert abs(weights[1] - exact) <= QUADRATURE_ABS_ERROR + 1e-11
    assert abs(weights[0] - (1.0 - exact)) <= QUADRATURE_ABS_ERROR + 1e-11


@given(st.floats(np.log10(MIN_RELIABLE_ALPHA), 1.0), st.floats(np.log10(MIN_RELIABLE_ALPHA), 1.0))
def test_rare_conversions_match_the_closed_form(log_alpha_0: float, log_alpha_1: float) -> None:
    # With beta = 1 the CDF is x^alpha, so P(X_1 > X_0) = integral alpha_1 x^(alpha_1 - 1)
    # x^alpha_0 dx = alpha_1 / (alpha_0 + alpha_1), exactly. With alpha ~ 0.01 much of the
    # mass lies at x < 1e-300, where a CDF computed from an underflowed x is wrong.
    alpha = np.array([10**log_alpha_0, 10**log_alpha_1])
    weights = prob_best(alpha, np.ones(2))
    assert abs(weights[1] - alpha[1] / alpha.sum()) <= QUADRATURE_ABS_ERROR


@given(
    st.tuples(
        st.floats(np.log10(MIN_RELIABLE_ALPHA), 1.5), st.floats(np.log10(MIN_RELIABLE_ALPHA), 1.5)
    ),
    st.integers(1, 30),
    st.floats(-1.0, 5.0),
)
def test_two_rare_variants_match_the_closed_form(
    log_alpha: tuple[float, float], beta_0: int, log_beta_1: float
) -> None:
    # 1 - X ~ Beta(beta, alpha), so P(X_1 > X_0) = P(1 - X_0 > 1 - X_1): the closed form with
    # the roles of alpha and beta swapped needs only beta_0 integer, and covers alpha down to
    # 0.005 for both variants (long left tails that multiply).
    alpha = 10 ** np.array(log_alpha)
    beta_1 = 10**log_beta_1
    exact = _exact_two_variants((beta_1, beta_0), (alpha[1], alpha[0]))
    weights = prob_best(alpha, np.array([float(beta_0), beta_1]))
    assert abs(weights[1] - exact) <= QUADRATURE_ABS_ERROR + 1e-11


def test_order_does_not_matter() -> None:
    alpha, beta = np.array([10.0, 30.0, 20.0]), np.array([400.0, 500.0, 450.0])
    order = np.array([2, 0, 1])
    assert np.allclose(
        prob_best(alpha, beta)[order], prob_best(alpha[order], beta[order]), rtol=0, atol=1e-12
    )
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
def test_floor_raises_only_what_is_below_it_and_moves_only_the_deficit(
    raw: list[float], share: float
) -> None:
    probabilities = np.array(raw) / sum(raw)
    floor = share / len(raw)
    floored = apply_floor(probabilities, floor)
    # The floor is an arithmetic step, not a renormalisation: each property can fail.
    assert np.all(floored >= floor)
    assert floored.sum() == pytest.approx(probabilities.sum(), abs=1e-12)
    deficit = np.maximum(floor - probabilities, 0.0).sum()
    # Only the deficit moves: up for the variants below the floor, down for the others.
    assert np.abs(floored - probabilities).sum() == pytest.approx(2 * deficit, abs=1e-12)
    above = probabilities >= floor
    assert np.all(floored[above] <= probabilities[above] + 1e-15)
    # Variants keep their order (a better variant is never shown less than a worse one).
    order = np.argsort(probabilities, kind="stable")
    assert np.all(np.diff(floored[order]) >= -1e-15)


def test_floor_by_hand() -> None:
    # Already above the floor: unchanged (a uniform mixture would have cost k * floor).
    assert apply_floor(np.array([0.5, 0.3, 0.2]), 0.01).tolist() == [0.5, 0.3, 0.2]
    # [0.995, 0.004, 0.001] with floor 0.01: deficit 0.006 + 0.009 = 0.015, all from the first.
    assert np.allclose(apply_floor(np.array([0.995, 0.004, 0.001]), 0.01), [0.98, 0.01, 0.01])
    # [0.6, 0.395, 0.005]: deficit 0.005 taken from the excesses 0.59 and 0.385 in
    # proportion: 0.59 * 0.005 / 0.975 and 0.385 * 0.005 / 0.975.
    expected = [0.6 - 0.59 * 0.005 / 0.975, 0.395 - 0.385 * 0.005 / 0.975, 0.01]
    assert np.allclose(apply_floor(np.array([0.6, 0.395, 0.005]), 0.01), expected, atol=1e-15)


def test_floor_must_leave_room_for_the_policy() -> None:
    with pytest.raises(ValueError, match="below 1/4"):
        apply_floor(np.full(4, 0.25), 0.25)
