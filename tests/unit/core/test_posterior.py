"""Counts, discounting by time, Beta posteriors and the empirical-Bayes pooling estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from streams.core.posterior import (
    _LOG_HETEROGENEITY_PRIOR,
    HETEROGENEITY_GRID,
    NO_HETEROGENEITY,
    Counts,
    decay_factor,
    decayed,
    estimate_pooling,
    pooling_from_arrays,
    posterior_mean,
    posterior_parameters,
    prior_strength,
    segment_baseline,
)

pytestmark = pytest.mark.unit


@st.composite
def counts(draw: st.DrawFn, variants: int | None = None) -> Counts:
    k = variants if variants is not None else draw(st.integers(1, 6))
    exposures = draw(st.lists(st.integers(0, 10**6), min_size=k, max_size=k))
    fractions = draw(st.lists(st.floats(0, 1), min_size=k, max_size=k))
    conversions = [int(n * f) for n, f in zip(exposures, fractions, strict=True)]
    return Counts.from_lists(exposures, conversions)


def test_constructors_agree() -> None:
    from_lists = Counts.from_lists([10, 20], [1, 3])
    assert Counts.from_dict({"a": (10, 1), "b": (20, 3)}) == from_lists
    assert (
        Counts.from_dict({"b": {"exposures": 20, "conversions": 3}, "a": (10, 1)}, ["a", "b"])
        == from_lists
    )
    assert Counts.from_dict({"b": (20, 3)}, ["a", "b"]) == Counts.from_lists([0, 20], [0, 3])
    assert Counts.zeros(3) == Counts.from_lists([0, 0, 0], [0, 0, 0])
    assert from_lists.variants == 2
    assert from_lists.total_exposures == 30.0


@pytest.mark.parametrize(
    ("exposures", "conversions", "message"),
    [
        ([10, 5], [2, 6], "variant 1 has more conversions"),
        ([10, -1], [2, 0], "non-negative"),
        ([10, 5], [2], "same length"),
        ([10, float("nan")], [2, 0], "finite"),
        ([], [], "non-empty"),
        (["x"], [0], "sequence of numbers"),
    ],
)
def test_invalid_counts_are_rejected_with_a_clear_message(
    exposures: list[float], conversions: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Counts.from_lists(exposures, conversions)


def test_unknown_variant_in_dict_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown variants"):
        Counts.from_dict({"a": (1, 0), "z": (1, 0)}, ["a"])


def test_counts_are_immutable() -> None:
    c = Counts.from_lists([10, 20], [1, 3])
    with pytest.raises(ValueError, match="read-only"):
        c.exposures[0] = 5
    source = np.array([10.0, 20.0])
    c = Counts(source, np.array([1.0, 2.0]))
    source[0] = 0.0
    assert c.exposures[0] == 10.0


def test_merge_and_its_validation() -> None:
    total = Counts.from_lists([10, 20], [1, 3]) + Counts.from_lists([5, 5], [0, 5])
    assert total == Counts.from_lists([15, 25], [1, 8])
    with pytest.raises(ValueError, match="cannot merge"):
        _ = Counts.zeros(2) + Counts.zeros(3)


def test_decay_factor_is_the_share_kept_per_minute() -> None:
    # gamma is the share of evidence kept per minute: one minute keeps gamma, two gamma^2,
    # half a minute sqrt(gamma); the half-life is ln 0.5 / ln gamma minutes.
    assert decay_factor(0.9, 60.0) == pytest.approx(0.9, rel=1e-12)
    assert decay_factor(0.9, 120.0) == pytest.approx(0.81, rel=1e-12)
    assert decay_factor(0.81, 30.0) == pytest.approx(0.9, rel=1e-12)
    half_life_s = 60.0 * math.log(0.5) / math.log(0.99)  # 69 minutes
    assert decay_factor(0.99, half_life_s) == pytest.approx(0.5, rel=1e-12)
    assert decay_factor(1.0, 1e9) == 1.0
    assert decay_factor(0.5, 0.0) == 1.0
    assert decay_factor(0.5, -30.0) == 1.0  # clock skew never makes evidence grow
    for discount in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="discount"):
            decay_factor(discount, 60.0)


@given(st.floats(0.01, 1.0), st.floats(0.0, 3_600.0), st.floats(0.0, 3_600.0))
def test_decaying_in_two_steps_is_decaying_once(
    discount: float, first: float, second: float
) -> None:
    # The pipeline decays stored counts at irregular moments: the result must not depend on
    # how the elapsed time was split.
    assert decay_factor(discount, first) * decay_factor(discount, second) == pytest.approx(
        decay_factor(discount, first + second), rel=1e-12
    )


def test_decayed_counts() -> None:
    counts = Counts.from_lists([10, 20], [2, 4])
    assert decayed(counts, 0.5, 60.0) == Counts.from_lists([5, 10], [1, 2])
    assert decayed(counts, 0.25, 30.0) == Counts.from_lists([5, 10], [1, 2])
    assert decayed(counts, 1.0, 600.0) == counts
    with pytest.raises(ValueError, match="discount"):
        decayed(counts, 0.0, 60.0)


@given(counts())
def test_posterior_means_are_rates(observed: Counts) -> None:
    means = posterior_mean(observed)
    assert np.all((means > 0) & (means < 1))
    alpha, beta = posterior_parameters(observed)
    assert np.all(alpha >= 1) and np.all(beta >= 1)


def _expected_counts(rates: np.ndarray, exposures: np.ndarray) -> list[Counts]:
    """Noise-free data: conversions exactly at the rates (deterministic tests)."""
    return [Counts(n, n * r) for n, r in zip(exposures, rates, strict=True)]


def test_pooling_separates_variant_rates_from_segment_baselines() -> None:
    # Variant B (+20 % everywhere) is shown mostly in the low-converting segment;
    # naive totals would rank it last (Simpson), the fitted rates must not.
    rates = np.outer([0.02, 0.03, 0.06, 0.10], [1.0, 1.2])
    exposures = np.array(
        [[2_000.0, 18_000.0], [5_000.0, 15_000.0], [15_000.0, 5_000.0], [18_000.0, 2_000.0]]
    )
    naive = sum(_expected_counts(rates, exposures), Counts.zeros(2))
    assert posterior_mean(naive)[1] < posterior_mean(naive)[0]
    pooled = estimate_pooling(_expected_counts(rates, exposures))
    assert pooled.variant_rates[1] / pooled.variant_rates[0] == pytest.approx(1.2, rel=0.02)
    # The lifts are identical and the data noise-free: no spread to explain. A nu^2 below the
    # relative sampling variance of the thinnest cell (1 / its conversions) could not be told
    # from 0 even with real noise, so the posterior mean must stay below it.
    assert pooled.heterogeneity < 1.0 / float((rates * exposures).min())


def test_pooling_detects_segments_that_disagree() -> None:
    alike = np.outer([0.03, 0.05, 0.08, 0.04], [1.0, 1.15, 0.95])
    disagree = alike * np.array(
        [[1.4, 0.8, 1.0], [0.7, 1.3, 1.0], [1.0, 0.7, 1.4], [1.0, 1.2, 0.7]]
    )
    exposures = np.full((4, 3), 20_000.0)
    same = estimate_pooling(_expected_counts(alike, exposures))
    different = estimate_pooling(_expected_counts(disagree, exposures))
    # No spread (see above): below the relative sampling variance of one cell.
    assert same.heterogeneity < 1.0 / float((alike * exposures).min())
    # The spread is the variance of the log deviations left after segment and variant effects
    # (two-way residuals, (4 - 1)(3 - 1) = 6 degrees of freedom): s^2. Given s^2 on 6 df, nu^2
    # lies in s^2 * 6 / chi2_6 quantiles with 95 % probability; the estimate must be there.
    logs = np.log(disagree / alike)
    residuals = logs - logs.mean(axis=1, keepdims=True) - logs.mean(axis=0) + logs.mean()
    spread = float((residuals**2).sum() / 6)
    low, high = 6 * spread / stats.chi2.ppf([0.975, 0.025], df=6)
    assert low <= different.heterogeneity <= high, (spread, different.heterogeneity)
    assert np.all(np.diff(different.heterogeneity_nodes) >= 0)
    assert different.heterogeneity_weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("exposures_per_cell", [100.0, 400.0])
def test_heterogeneity_posterior_is_calibrated(exposures_per_cell: float) -> None:
    """Simulation-based calibration (Cook, Gelman and Rubin 2006): draw nu^2 from the
    prior, data from the model, and locate the true nu^2 in the posterior (randomised
    PIT, u = P(below) + V P(at), V uniform). If the posterior is right, u is uniform on
    (0, 1). At 4 to 20 expected conversions per cell binomial noise and heterogeneity
    are of one size, where plugging fitted baselines and rates into the likelihood puts
    nu^2 too low: without the Cox-Reid adjustment (`_log_det_information` = 0) these
    draws give a mean of u of 0.65 and 0.64, and the truth above the posterior's 90 %
    quantile in 35 % and 32 % of them; with it 0.49 and 0.48, 12 % and 8 %.

    Tolerances: for uniform u over R = 300 draws the mean has sd sqrt(1/12/R) = 0.0167
    and each tail share (u > 0.9, u < 0.1) sd sqrt(0.09/R) = 0.0173; the bounds are 4 sd.
    """
    draws = 300
    rng = np.random.default_rng(20261130)
    mean = np.outer([0.5, 0.8, 1.0, 1.2, 1.5, 2.0], [0.04, 0.05, 0.045])
    exposures = np.full(mean.shape, exposures_per_cell)
    prior = np.exp(_LOG_HETEROGENEITY_PRIOR)
    prior /= prior.sum()
    positions = np.empty(draws)
    for draw in range(draws):
        true = rng.choice(prior.size, p=prior)
        strength = prior_strength(mean, HETEROGENEITY_GRID[true])
        rates = rng.beta(strength * mean, strength * (1.0 - mean))
        conversions = rng.binomial(exposures.astype(int), rates).astype(float)
        posterior = pooling_from_arrays(exposures, conversions).heterogeneity_posterior
        positions[draw] = posterior[:true].sum() + rng.random() * posterior[true]
    assert abs(positions.mean() - 0.5) <= 4 * np.sqrt(1 / 12 / draws)
    assert (positions > 0.9).mean() <= 0.1 + 4 * np.sqrt(0.09 / draws)
    assert (positions < 0.1).mean() <= 0.1 + 4 * np.sqrt(0.09 / draws)


def test_agreeing_segments_make_no_heterogeneity_the_likely_model() -> None:
    # Every variant +15 % / -5 % in all six segments, 200 conversions per cell, noise-free:
    # nothing to explain beyond baselines, so the point mass at NO_HETEROGENEITY must gain
    # on its prior odds (1:1), and the lowest node, the strongest prior, must be that point.
    mean = np.outer([0.02, 0.04, 0.05, 0.06, 0.09, 0.12], [1.0, 1.15, 0.95])
    exposures = 200.0 / mean
    pooled = pooling_from_arrays(exposures, exposures * mean)
    assert pooled.heterogeneity_posterior[0] > 0.5
    assert pooled.heterogeneity_nodes[0] == pytest.approx(NO_HETEROGENEITY)
    # Segments that disagree (in half of them B -40 % and C +40 %, against the relative
    # sampling sd 1 / sqrt(200) = 7 % of a cell): the point mass is ruled out.
    flipped = mean * np.where(np.arange(6)[:, None] % 2, [1.0, 0.6, 1.4], 1.0)
    disagree = pooling_from_arrays(exposures, exposures * flipped)
    assert disagree.heterogeneity_posterior[0] < 1e-6


def test_pooling_survives_segments_that_share_no_variant() -> None:
    # Early traffic: three segments saw A and B, one saw only C. The ratio of C to the
    # others is not identified (the information matrix is singular); the estimate must
    # still be a distribution, and the same as with a tiny bridge between the groups.
    exposures = np.array([[100.0, 100.0, 0.0], [200.0, 50.0, 0.0], [80.0, 90.0, 0.0], [0, 0, 300]])
    conversions = np.array([[3.0, 5.0, 0.0], [8.0, 2.0, 0.0], [4.0, 4.0, 0.0], [0, 0, 9]])
    split = pooling_from_arrays(exposures, conversions)
    assert np.all(np.isfinite(split.heterogeneity_posterior))
    assert split.heterogeneity_posterior.sum() == pytest.approx(1.0)
    bridged = exposures.copy()
    bridged[3, 0] = 1e-3
    joined = pooling_from_arrays(bridged, conversions)
    assert np.allclose(split.heterogeneity_posterior, joined.heterogeneity_posterior, atol=1e-4)


def test_pooling_without_data_falls_back_to_the_prior() -> None:
    empty = estimate_pooling([Counts.zeros(3), Counts.zeros(3)])
    assert np.allclose(empty.variant_rates, 0.5)
    assert 0 < empty.heterogeneity < 1
    with pytest.raises(ValueError, match="at least one segment"):
        estimate_pooling([])


@settings(max_examples=50)
@given(st.lists(counts(variants=3), min_size=1, max_size=8))
def test_pooling_estimate_is_always_usable(segments: list[Counts]) -> None:
    pooled = estimate_pooling(segments)
    assert np.all((pooled.variant_rates > 0) & (pooled.variant_rates < 1))
    assert 0 <= pooled.heterogeneity <= 1
    assert np.all(pooled.heterogeneity_nodes > 0)
    for segment in segments:
        rates, variances = pooled.leave_out(segment)
        assert np.all((rates > 0) & (rates <= 1))
        assert np.all((variances > 0) & (variances <= 1))


def test_leave_out_removes_the_segments_own_evidence() -> None:
    rates = np.outer([0.03, 0.05, 0.08], [1.0, 1.2])
    exposures = np.full((3, 2), 10_000.0)
    segments = _expected_counts(rates, exposures)
    pooled = estimate_pooling(segments)
    odd = Counts.from_lists([10_000, 10_000], [900, 300])  # B far worse here
    with_odd = estimate_pooling([*segments, odd])
    others, variances = with_odd.leave_out(odd)
    # Without the odd segment's data the ratio of the rates is the others' 1.2 ...
    assert others[1] / others[0] == pytest.approx(1.2, rel=0.05)
    # ... while the fit including it is pulled toward it.
    assert with_odd.variant_rates[1] / with_odd.variant_rates[0] < others[1] / others[0]
    assert np.all(variances > 1.0 / pooled.rate_numerators)


def test_segment_baseline_is_observed_over_expected_shrunk_to_one() -> None:
    rates = np.array([0.05, 0.05])
    segment = Counts.from_lists([10_000, 10_000], [1_000, 1_000])  # twice the expected
    assert segment_baseline(segment, rates) == pytest.approx(2.0, rel=0.01)
    assert segment_baseline(Counts.zeros(2), rates) == 1.0


def test_heterogeneity_stops_the_most_shown_variant_from_setting_the_baseline() -> None:
    rates = np.array([0.05, 0.05])
    # Variant 0 was shown 20x more and converts 2x; variant 1 at the global rate.
    segment = Counts.from_lists([20_000, 1_000], [2_000, 50])
    fixed_effect = segment_baseline(segment, rates)
    random_effect = segment_baseline(segment, rates, heterogeneity=0.1)
    assert fixed_effect > 1.9
    assert 1.0 < random_effect < 1.6


def test_heterogeneity_nodes_follow_the_posterior_by_thirds() -> None:
    from streams.core.posterior import HETEROGENEITY_GRID, _posterior_nodes

    # All mass on one grid point: every third is that point.
    point = np.zeros(HETEROGENEITY_GRID.size)
    point[10] = 1.0
    nodes, weights = _posterior_nodes(point)
    assert np.allclose(nodes, HETEROGENEITY_GRID[10], rtol=1e-12)
    assert np.allclose(weights, 1 / 3)
    # A third of the mass on each of three points: one node on each.
    three = np.zeros(HETEROGENEITY_GRID.size)
    three[[2, 12, 20]] = 1 / 3
    nodes, _ = _posterior_nodes(three)
    assert np.allclose(nodes, HETEROGENEITY_GRID[[2, 12, 20]], rtol=1e-9)
    # A thin tail toward 0 (5 % of the mass spread over the lowest 10 points) moves the
    # lowest node only a little: a rule built from the mean and sd of log nu^2 would put
    # 1/6 of the weight far out in that tail.
    tail = np.zeros(HETEROGENEITY_GRID.size)
    tail[:10] = 0.005
    tail[[16, 17, 18]] = 0.95 / 3
    nodes, _ = _posterior_nodes(tail)
    assert nodes[0] >= HETEROGENEITY_GRID[14]
