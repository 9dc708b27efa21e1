"""Policies: names, settings, sources, floors and how each one uses the data."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.policies import (
    DEFAULT_POLICY,
    EXPLORATION_PRESETS,
    POLICY_NAMES,
    SOURCES,
    Allocation,
    PolicySettings,
    floor_level,
    make_policy,
    thompson_probabilities,
)
from streams.core.posterior import Counts, estimate_pooling

pytestmark = pytest.mark.unit

EXPERIMENT = Counts.from_lists([3_000, 3_000, 3_000], [150, 180, 120])  # B best overall


def test_names_and_default() -> None:
    assert POLICY_NAMES == ("uniform", "global", "segment", "pooled")
    assert DEFAULT_POLICY in POLICY_NAMES
    for name in POLICY_NAMES:
        assert make_policy(name).name == name
    with pytest.raises(ValueError, match="unknown policy 'thompson'"):
        make_policy("thompson")


def test_settings_from_mapping_and_validation() -> None:
    policy = make_policy("pooled", {"floor": 0.02, "exploration": "aggressive"})
    assert policy.settings == PolicySettings(floor=0.02, exploration="aggressive")
    assert make_policy("global", None).settings == PolicySettings()
    with pytest.raises(ValueError, match="unknown policy settings"):
        make_policy("global", {"flor": 0.1})
    problems = {
        "floor": 0.5,
        "floor_evidence": 0.0,
        "exploration": "bold",
        "discount": 0.0,
        "holdout_share": 0.6,
        "burn_in": -1,
        "min_samples_per_segment": -5,
        "warm_start_ess": 0.0,
        "pooling_strength": -1.0,
    }
    for key, value in problems.items():
        with pytest.raises(ValueError, match=key):
            PolicySettings.from_mapping({key: value})


def test_every_preset_is_a_tempering_factor() -> None:
    assert set(EXPLORATION_PRESETS) == {"default", "aggressive", "conservative"}
    assert PolicySettings(exploration="aggressive").tempering < 1.0
    assert PolicySettings().tempering == 1.0
    assert PolicySettings(exploration="conservative").tempering > 1.0


@st.composite
def experiment_data(draw: st.DrawFn) -> tuple[Counts, Counts]:
    k = draw(st.integers(2, 6))
    rates = draw(st.lists(st.floats(0.005, 0.3), min_size=k, max_size=k))
    segment_n = draw(st.lists(st.integers(0, 20_000), min_size=k, max_size=k))
    rest_n = draw(st.lists(st.integers(0, 200_000), min_size=k, max_size=k))
    segment = Counts.from_lists(
        segment_n, [int(n * r) for n, r in zip(segment_n, rates, strict=True)]
    )
    rest = Counts.from_lists(rest_n, [int(n * r) for n, r in zip(rest_n, rates, strict=True)])
    return segment, segment + rest


@settings(max_examples=60, deadline=None)
@given(
    experiment_data(),
    st.sampled_from(POLICY_NAMES),
    st.sampled_from(sorted(EXPLORATION_PRESETS)),
    st.floats(0.0, 0.99),
    st.sampled_from([1.0, 50.0, 5_000.0, float("inf")]),
    st.integers(0, 300),
    st.booleans(),
)
def test_allocations_keep_the_floor_bound_and_pay_only_the_deficit(
    data: tuple[Counts, Counts],
    name: str,
    exploration: str,
    floor_share: float,
    floor_evidence: float,
    burn_in: int,
    with_pooling: bool,
) -> None:
    segment, experiment = data
    floor = floor_share / segment.variants
    common = {"exploration": exploration, "burn_in": burn_in, "floor_evidence": floor_evidence}
    policy = make_policy(name, {**common, "floor": floor})
    unfloored = make_policy(name, {**common, "floor": 0.0})
    pooling = estimate_pooling([segment, experiment]) if with_pooling else None
    allocation = policy.weights(segment, experiment, pooling)
    raw = unfloored.weights(segment, experiment, pooling).probabilities
    assert allocation.source in SOURCES
    # The documented guarantee, computed here from the formula, not by the code under test.
    n = experiment.total_exposures
    bound = floor * min(1.0, (floor_evidence / n) ** 0.5) if n > 0 else floor
    assert np.all(allocation.probabilities >= bound * (1 - 1e-12))
    # The floor adds exactly the deficit below the bound and moves nothing else: a uniform
    # mixture (the old floor) would move k * bound, a renormalisation would hide a leak.
    deficit = np.maximum(bound - raw, 0.0).sum()
    assert np.abs(allocation.probabilities - raw).sum() == pytest.approx(2 * deficit, abs=1e-9)
    assert allocation.probabilities.sum() == pytest.approx(raw.sum(), abs=1e-12)


def test_floor_decays_as_the_square_root_of_the_evidence() -> None:
    # floor * min(1, sqrt(floor_evidence / N)): full up to floor_evidence exposures, then
    # 10x lower for 100x the evidence.
    assert floor_level(0.01, 50.0, 0.0) == 0.01
    assert floor_level(0.01, 50.0, 50.0) == 0.01
    assert floor_level(0.01, 50.0, 5_000.0) == pytest.approx(0.001)
    assert floor_level(0.01, 50.0, 500_000.0) == pytest.approx(0.0001)
    assert floor_level(0.01, float("inf"), 1e12) == 0.01
    # A clear winner: the losers get exactly the level (P(best) ~ 0 for them), no more.
    counts = Counts.from_lists([2_000, 2_000, 1_000], [400, 100, 50])
    allocation = make_policy("global").weights(counts, counts).probabilities
    level = 0.01 * (50.0 / 5_000.0) ** 0.5
    assert allocation[1:] == pytest.approx([level, level], rel=1e-6)
    assert allocation[0] == pytest.approx(1.0 - 2 * level, rel=1e-9)


MONTE_CARLO_DRAWS = 2_000_000


def _monte_carlo_best(alpha: np.ndarray, beta: np.ndarray, seed: int) -> np.ndarray:
    draws = np.random.default_rng(seed).beta(alpha, beta, size=(MONTE_CARLO_DRAWS, alpha.size))
    return np.bincount(draws.argmax(axis=1), minlength=alpha.size) / MONTE_CARLO_DRAWS


def _five_sigma(p: np.ndarray) -> np.ndarray:
    # The number of draws where variant i is highest is binomial(N, p_i): its share has
    # standard error sqrt(p (1 - p) / N). 5 of them: a correct p_i fails by chance with
    # probability < 6e-7; the quadrature's own error (1e-8) is far below.
    return np.asarray(5 * np.sqrt(p * (1 - p) / MONTE_CARLO_DRAWS) + 1e-8)


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [
        # A pooled prior of strength 2 at a 1 % rate, no conversion yet, vs one conversion:
        # P(best of variant 0) = 0.0134; raising alpha to 0.1 first gave 0.0652.
        ([0.02, 1.02], [1_000.0, 1_000.0]),
        # Rates 0.1-0.5 %, thin data: alpha between 0.03 and 3.
        ([0.03, 0.4, 3.0], [300.0, 800.0, 900.0]),
    ],
)
def test_thompson_weights_at_rare_rates_match_monte_carlo(
    alpha: list[float], beta: list[float]
) -> None:
    a, b = np.array(alpha), np.array(beta)
    weights = thompson_probabilities([(1.0, a, b)])
    sampled = _monte_carlo_best(a, b, seed=20241)
    assert np.all(np.abs(weights - sampled) <= _five_sigma(weights)), (weights, sampled)


def test_global_policy_at_rates_below_one_percent_matches_monte_carlo() -> None:
    counts = Counts.from_lists([3_000, 2_500, 800], [9, 11, 1])  # 0.3 %, 0.44 %, 0.13 %
    weights = make_policy("global", {"floor": 0.0}).weights(counts, counts).probabilities
    sampled = _monte_carlo_best(
        1.0 + counts.conversions, 1.0 + counts.exposures - counts.conversions, seed=20242
    )
    assert np.all(np.abs(weights - sampled) <= _five_sigma(weights)), (weights, sampled)


def test_uniform_splits_evenly() -> None:
    allocation = make_policy("uniform").weights(Counts.zeros(4), Counts.zeros(4))
    assert allocation.source == "uniform"
    assert np.allclose(allocation.probabilities, 0.25)


def test_global_ignores_the_segment() -> None:
    policy = make_policy("global")
    a = policy.weights(Counts.from_lists([500, 500, 500], [50, 5, 5]), EXPERIMENT)
    b = policy.weights(Counts.zeros(3), EXPERIMENT)
    assert a.source == b.source == "global"
    assert np.array_equal(a.probabilities, b.probabilities)
    assert a.probabilities.argmax() == 1


def test_segment_falls_back_to_global_below_min_samples() -> None:
    policy = make_policy("segment", {"min_samples_per_segment": 100})
    small = Counts.from_lists([30, 30, 30], [6, 0, 0])  # 90 exposures
    large = Counts.from_lists([300, 300, 300], [60, 10, 10])  # A best here
    fallback = policy.weights(small, EXPERIMENT + small)
    assert fallback.source == "global"
    assert np.allclose(
        fallback.probabilities,
        make_policy("global").weights(small, EXPERIMENT + small).probabilities,
    )
    own = policy.weights(large, EXPERIMENT + large)
    assert own.source == "segment"
    assert own.probabilities.argmax() == 0


def test_burn_in_is_uniform_until_every_variant_has_enough_exposures() -> None:
    policy = make_policy("global", {"burn_in": 50})
    early = Counts.from_lists([60, 49, 60], [10, 0, 0])
    assert policy.weights(early, early).source == "burn_in"
    assert np.allclose(policy.weights(early, early).probabilities, 1 / 3)
    later = Counts.from_lists([60, 50, 60], [10, 0, 0])
    assert policy.weights(later, later).source == "global"


def test_more_exploration_means_closer_to_uniform() -> None:
    data = Counts.from_lists([400, 400, 400], [20, 28, 18])
    leader = {
        preset: make_policy("global", {"exploration": preset, "floor": 0.0})
        .weights(data, data)
        .probabilities[1]
        for preset in EXPLORATION_PRESETS
    }
    assert leader["aggressive"] < leader["default"] < leader["conservative"]


def test_floor_too_high_for_the_number_of_variants() -> None:
    policy = make_policy("global", {"floor": 0.3})
    with pytest.raises(ValueError, match="below 1/4"):
        policy.weights(Counts.zeros(4), Counts.zeros(4))


def test_mismatched_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 variants but global counts have 3"):
        make_policy("pooled").weights(Counts.zeros(2), Counts.zeros(3))
    pooling = estimate_pooling([Counts.zeros(2)])
    with pytest.raises(ValueError, match="pooling estimate has 2 variants"):
        make_policy("pooled").weights(Counts.zeros(3), Counts.zeros(3), pooling)


def test_allocation_is_read_only_and_checks_its_source() -> None:
    allocation = Allocation(np.array([0.5, 0.5]), "global")
    with pytest.raises(ValueError, match="read-only"):
        allocation.probabilities[0] = 1.0
    with pytest.raises(ValueError, match="source"):
        Allocation(np.array([1.0]), "oracle")


def _segment_with_a_best(exposures: int) -> Counts:
    """A segment where A converts at 8 %, B and C at 5 % (globally B is best)."""
    n = exposures // 3
    return Counts.from_lists([n, n, n], [round(0.08 * n), round(0.05 * n), round(0.05 * n)])


@pytest.mark.parametrize("with_pooling", [False, True])
def test_pooled_moves_from_the_global_answer_to_the_segment_as_evidence_grows(
    with_pooling: bool,
) -> None:
    policy = make_policy("pooled", {"floor": 0.0})
    rest = Counts.from_lists([30_000, 30_000, 30_000], [1_500, 1_800, 1_200])
    share_of_a = []
    first_leader = None
    for exposures in (0, 300, 1_500, 6_000, 30_000):
        segment = _segment_with_a_best(exposures)
        pooling = None
        if with_pooling:
            # Heterogeneity is estimated from all segments; here 3 others agree with `rest`.
            others = [Counts(rest.exposures / 3, rest.conversions / 3)] * 3
            pooling = estimate_pooling([*others, segment])
        allocation = policy.weights(segment, rest + segment, pooling)
        assert allocation.source == "pooled"
        share_of_a.append(allocation.probabilities[0])
        if first_leader is None:
            first_leader = int(allocation.probabilities.argmax())
    assert first_leader == 1  # no own data: the experiment's answer (B)
    # Plenty of own data: the segment's answer (A). At 10,000 exposures per variant A's lead
    # (8 % vs 5 %) is 8.6 standard errors of the difference, sqrt(0.08 * 0.92 / 10^4 +
    # 0.05 * 0.95 / 10^4) = 0.0035; a prior as strong as the own data would halve it to 4.3,
    # still P(A best) > 0.99999, so 0.95 leaves room for a prior 3x stronger.
    assert share_of_a[-1] > 0.95
    # Data exactly at the rates: every step adds evidence for A, so A's share never drops
    # (no slack: a policy that overreacts to the rounding of the counts fails).
    assert all(later > earlier for earlier, later in pairwise(share_of_a))


def test_pooled_without_segment_data_agrees_with_global_ranking() -> None:
    allocation = make_policy("pooled").weights(Counts.zeros(3), EXPERIMENT)
    assert (
        allocation.probabilities.argmax()
        == make_policy("global").weights(Counts.zeros(3), EXPERIMENT).probabilities.argmax()
    )
