"""Counts, updates, Beta posteriors and the empirical-Bayes pooling estimate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.posterior import (
    Counts,
    estimate_pooling,
    posterior_mean,
    posterior_parameters,
    segment_baseline,
    update,
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


def test_discounting_scales_old_evidence() -> None:
    c = Counts.from_lists([10, 20], [2, 4]).discounted(0.5)
    assert c == Counts.from_lists([5, 10], [1, 2])
    for gamma in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="gamma"):
            Counts.zeros(2).discounted(gamma)


def test_update_adds_one_observation_after_discounting() -> None:
    start = Counts.from_lists([10, 20], [2, 4])
    assert update(start, 1, converted=True) == Counts.from_lists([10, 21], [2, 5])
    assert update(start, 0, converted=False) == Counts.from_lists([11, 20], [2, 4])
    assert update(start, 0, converted=True, gamma=0.5) == Counts.from_lists([6, 10], [2, 2])
    with pytest.raises(ValueError, match="out of range"):
        update(start, 2, converted=True)


@given(
    st.integers(1, 5).flatmap(
        lambda k: st.tuples(
            st.just(k), st.lists(st.tuples(st.integers(0, k - 1), st.booleans()), max_size=50)
        )
    )
)
def test_counts_never_decrease_without_discount(case: tuple[int, list[tuple[int, bool]]]) -> None:
    variants, events = case
    current = Counts.zeros(variants)
    for variant, converted in events:
        following = update(current, variant, converted)
        assert np.all(following.exposures >= current.exposures)
        assert np.all(following.conversions >= current.conversions)
        assert following.total_exposures == current.total_exposures + 1
        current = following


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
    assert pooled.heterogeneity < 0.003  # nu < 5.5 %: the lifts are identical


def test_pooling_detects_segments_that_disagree() -> None:
    alike = np.outer([0.03, 0.05, 0.08, 0.04], [1.0, 1.15, 0.95])
    disagree = alike * np.array(
        [[1.4, 0.8, 1.0], [0.7, 1.3, 1.0], [1.0, 0.7, 1.4], [1.0, 1.2, 0.7]]
    )
    exposures = np.full((4, 3), 20_000.0)
    same = estimate_pooling(_expected_counts(alike, exposures))
    different = estimate_pooling(_expected_counts(disagree, exposures))
    assert same.heterogeneity < 0.003
    assert different.heterogeneity > 0.03  # residual relative sd ~ 0.25, so nu^2 ~ 0.06
    assert np.all(np.diff(different.heterogeneity_nodes) >= 0)
    assert different.heterogeneity_weights.sum() == pytest.approx(1.0)


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
