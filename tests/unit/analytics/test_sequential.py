"""Confidence sequences and e-BH: the published formulas, and time-uniform coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streams.analytics import sequential

pytestmark = pytest.mark.unit


def test_boundary_is_the_published_normal_mixture() -> None:
    # Waudby-Smith et al. (2023), Theorem 2.2, with σ̂ = 1 for the mean of N points:
    # half-width = sqrt( 2 (Nρ² + 1) / (N² ρ²) · log( sqrt(Nρ² + 1) / α ) ); times √N it is
    # the multiplier of σ̂/√N that `boundary` returns.
    alpha, n = 0.05, 2_500.0
    rho2 = sequential.rho_squared(alpha)
    half = math.sqrt(
        2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    )
    got = float(sequential.boundary(np.array(n), alpha, alpha))
    assert got == pytest.approx(half * math.sqrt(n), rel=1e-12)


def test_rho_makes_the_sequence_tightest_at_the_design_size() -> None:
    # ρ_opt² = (-2 log α + log(-2 log α + 1)) / N* (Waudby-Smith et al. 2023, Section 2.5)
    alpha, design = 0.05, float(sequential.DESIGN_N)

    def multiplier(rho2: float) -> float:
        x = design * rho2
        return math.sqrt(2 * (x + 1) / x * (math.log(1 / alpha) + 0.5 * math.log1p(x)))

    best = sequential.rho_squared(alpha)
    assert multiplier(best) < multiplier(0.8 * best)
    assert multiplier(best) < multiplier(1.25 * best)
    assert multiplier(best) > 1.96  # the price of looking at every N


def test_e_value_crosses_one_over_level_exactly_at_the_boundary() -> None:
    n = np.array([50.0, 1_000.0, 10_000.0, 250_000.0])
    for level in (0.05, 0.001):
        edge = sequential.boundary(n, level, 0.05)
        above = sequential.log_e_value(n, edge * 1.0001, 0.05)
        below = sequential.log_e_value(n, edge * 0.9999, 0.05)
        assert np.all(above > math.log(1 / level))
        assert np.all(below < math.log(1 / level))


def test_sequence_covers_at_every_look_where_a_repeated_z_interval_does_not() -> None:
    # 2,000 seeded paths of 3,000 i.i.d. N(0.3, 2²) points; σ̂ estimated as it goes, looks
    # from the 20th point on. A crossing anywhere counts. Under the theorem the crossing
    # probability is ≤ α = 0.05 (asymptotically); the count of crossing paths is then
    # Binomial(2000, ≤ 0.05): sd ≤ sqrt(2000 · 0.05 · 0.95) = 9.75 paths = 0.0049, so
    # 0.05 + 3 sd = 0.065 bounds the observed share unless the sequence undercovers.
    rng = np.random.default_rng(20260001)
    paths, steps, mean, sd = 2_000, 3_000, 0.3, 2.0
    x = rng.normal(mean, sd, size=(paths, steps))
    n = np.arange(1, steps + 1)
    s = np.cumsum(x, axis=1)
    s2 = np.cumsum(x * x, axis=1)
    running_mean = s / n
    var = np.maximum(s2 / n - running_mean**2, 1e-12)
    se = np.sqrt(var / n)
    looks = slice(19, None)
    error = np.abs(running_mean - mean)[:, looks]
    cs = sequential.boundary(n[looks], 0.05, 0.05) * se[:, looks]
    crossed = np.any(error > cs, axis=1).mean()
    naive = np.any(error > 1.96 * se[:, looks], axis=1).mean()
    assert crossed <= 0.065
    assert naive > 0.3  # repeated fixed-sample intervals miss the mean on most paths


def test_e_bh_rejects_the_k_largest_that_clear_m_over_alpha_k() -> None:
    # m = 5, α = 0.1: thresholds m/(αk) = 50, 25, 16.7, 12.5, 10 for k = 1..5.
    # e sorted: 60 (≥ 50), 30 (≥ 25), 12 (< 16.7), 11 (< 12.5), 0.5 (< 10) → k̂ = 2.
    e = np.array([12.0, 60.0, 0.5, 30.0, 11.0])
    rejected = sequential.e_bh(np.log(e), 0.1)
    assert rejected.tolist() == [False, True, False, True, False]
    # k̂ is the largest k that passes, even if a smaller one fails: 4 values of 13 ≥ 12.5
    rejected = sequential.e_bh(np.log(np.array([13.0, 13.0, 13.0, 13.0, 1.0])), 0.1)
    assert rejected.tolist() == [True, True, True, True, False]


def test_e_bh_is_total() -> None:
    assert sequential.e_bh(np.array([]), 0.05).size == 0
    out = sequential.e_bh(np.array([np.nan, -np.inf, np.log(1e6)]), 0.05)
    assert out.tolist() == [False, False, True]
