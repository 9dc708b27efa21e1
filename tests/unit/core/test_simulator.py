"""The simulator: scenarios, determinism, metrics, and contextual policies beating global."""

from __future__ import annotations

import numpy as np
import pytest

from streams.core.policies import make_policy
from streams.core.simulator import SCENARIOS, Scenario, heterogeneous, simulate

pytestmark = pytest.mark.unit


def test_scenarios_are_realistic_and_complete() -> None:
    assert set(SCENARIOS) == {"heterogeneous", "homogeneous", "sparse", "drift", "delayed"}
    for name, factory in SCENARIOS.items():
        scenario = factory()
        assert scenario.name == name
        assert scenario.shares.sum() == pytest.approx(1.0)
        for rates in (scenario.rates, scenario.drift_rates):
            if rates is not None:
                assert np.all((rates >= 0.01) & (rates <= 0.15)), name  # web conversion rates
    het = SCENARIOS["heterogeneous"]()
    assert het.rates.shape == (6, 3)
    assert len(set(het.rates.argmax(axis=1))) == 3  # the best variant differs by segment
    assert len(set(SCENARIOS["homogeneous"]().rates.argmax(axis=1))) == 1
    assert SCENARIOS["sparse"]().segments == 60
    assert SCENARIOS["drift"]().drift_rates is not None
    assert SCENARIOS["delayed"]().update_every == 500


def test_invalid_scenarios_are_rejected() -> None:
    with pytest.raises(ValueError, match="shares"):
        Scenario("bad", rates=np.full((2, 3), 0.05), shares=np.ones(3))
    with pytest.raises(ValueError, match="probabilities"):
        Scenario("bad", rates=np.full((2, 3), 1.5), shares=np.ones(2))


def test_same_seed_same_run() -> None:
    first = simulate(make_policy("pooled"), heterogeneous(), 3_000, seed=5)
    again = simulate(make_policy("pooled"), heterogeneous(), 3_000, seed=5)
    other = simulate(make_policy("pooled"), heterogeneous(), 3_000, seed=6)
    assert first.regret == again.regret
    assert first.conversions == again.conversions
    assert np.array_equal(first.best_share_over_time, again.best_share_over_time)
    assert first.regret != other.regret


def test_uniform_is_the_baseline() -> None:
    scenario = heterogeneous()
    visits = 20_000
    result = simulate(make_policy("uniform"), scenario, visits, seed=1)
    assert result.visits_to_95 is None
    # Expected regret of an equal split: visits * sum_s share_s (best_s - mean_s), up to
    # the randomness of the segment sequence (a few %).
    gap = scenario.shares @ (scenario.rates.max(axis=1) - scenario.rates.mean(axis=1))
    assert result.regret == pytest.approx(visits * gap, rel=0.05)
    assert abs(result.conversions_vs_uniform) < 0.02
    assert result.best_share == pytest.approx(1 / 3, abs=0.02)
    assert result.regret_by_segment.sum() == pytest.approx(result.regret)
    assert result.regret_over_time[-1] == pytest.approx(result.regret)


def test_contextual_policies_beat_global_where_segments_differ() -> None:
    scenario = heterogeneous()
    visits = 40_000
    # No policy that ignores the segment can do better than always showing the
    # single variant with the lowest traffic-weighted gap to each segment's best:
    # its expected regret is at least visits * that gap.
    gaps = scenario.shares @ (scenario.rates.max(axis=1, keepdims=True) - scenario.rates)
    non_contextual_bound = visits * gaps.min()
    results = {
        name: simulate(make_policy(name), scenario, visits, seed=3)
        for name in ("global", "segment", "pooled")
    }
    # Global sits at (or, while exploring, above) the bound; the segment sequence is
    # random, so allow 5 %.
    assert results["global"].regret >= 0.95 * non_contextual_bound
    # Contextual policies learn each segment's best. Measured over 20 seeds at 40k
    # visits, in units of the bound: global 1.11 +- 0.05 (min 1.03), segment
    # 0.36 +- 0.10, pooled 0.47 +- 0.15. 2/3 lies above mean + 1 sd of both
    # contextual policies and far below global; the seed is fixed.
    for name in ("segment", "pooled"):
        assert results[name].regret < 2 / 3 * non_contextual_bound, name
        assert results[name].regret < results["global"].regret
        assert results[name].conversions_vs_uniform > results["global"].conversions_vs_uniform


def test_metrics_of_a_converging_run() -> None:
    easy = Scenario(
        "easy", rates=np.array([[0.02, 0.08, 0.03], [0.04, 0.12, 0.05]]), shares=np.array([3, 1])
    )
    result = simulate(make_policy("global"), easy, 10_000, seed=2)
    assert result.visits_to_95 is not None and 0 < result.visits_to_95 <= 10_000
    assert result.best_share > 0.8
    assert result.conversions_vs_uniform > 0.5
    assert result.checkpoints[-1] == 10_000
    assert result.best_share_over_time.shape == (len(result.checkpoints), 2)
    assert result.best_share_over_time[-1].min() > 0.95
    assert np.all(np.diff(result.regret_over_time) >= 0)


def test_drift_discount_holdout_and_delay_run() -> None:
    policy = make_policy("segment", {"discount": 0.999, "holdout_share": 0.2})
    result = simulate(policy, SCENARIOS["drift"](), 4_000, seed=1)
    assert result.regret > 0
    delayed = simulate(make_policy("pooled"), SCENARIOS["delayed"](), 4_000, seed=1)
    # Posteriors change every 500 visits only, so weights are recomputed rarely.
    assert delayed.weight_computations <= 6 * (4_000 // 500 + 1)
