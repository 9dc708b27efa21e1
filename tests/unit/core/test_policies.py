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
    make_policy,
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
    st.integers(0, 300),
    st.booleans(),
)
def test_weights_sum_to_one_and_respect_the_floor(
    data: tuple[Counts, Counts],
    name: str,
    exploration: str,
    floor_share: float,
    burn_in: int,
    with_pooling: bool,
) -> None:
    segment, experiment = data
    floor = floor_share / segment.variants
    policy = make_policy(name, {"floor": floor, "exploration": exploration, "burn_in": burn_in})
    pooling = estimate_pooling([segment, experiment]) if with_pooling else None
    allocation = policy.weights(segment, experiment, pooling)
    assert allocation.source in SOURCES
    assert allocation.probabilities.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(allocation.probabilities >= floor - 1e-12)


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
    assert share_of_a[-1] > 0.95  # plenty of own data: the segment's answer (A)
    assert all(later >= earlier - 0.02 for earlier, later in pairwise(share_of_a))


def test_pooled_without_segment_data_agrees_with_global_ranking() -> None:
    allocation = make_policy("pooled").weights(Counts.zeros(3), EXPERIMENT)
    assert (
        allocation.probabilities.argmax()
        == make_policy("global").weights(Counts.zeros(3), EXPERIMENT).probabilities.argmax()
    )
