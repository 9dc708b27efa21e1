"""Inverse-propensity (Hájek) rates: always in [0, 1], consistent under the service's
adaptive allocation where the raw pooled rate is not, and influence sums that match the
sampling variance (by hand, per decision, and by Monte Carlo)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from streams.analytics.ipw import (
    Cells,
    Sums,
    hajek_rate,
    log_ratio_part_to_whole,
    log_ratio_within,
)
from streams.analytics.lift import analyse
from streams.bench.aa import Traffic, run
from streams.core.snapshot import ExperimentSnapshot, SegmentSnapshot, VariantStats

pytestmark = pytest.mark.unit

# Two equal segments where each variant wins in one: the contextual policy shows b mostly
# in segment 0 and a mostly in segment 1, so a variant's raw rate pooled over segments
# weights its good segment more (Simpson), while "the rate if everyone saw v" is the
# traffic-weighted mean of its two rates.
RATES = np.array([[0.02, 0.10], [0.10, 0.02]])
SHARES = np.array([0.5, 0.5])
TRUTH = SHARES @ RATES  # [0.06, 0.06]
RUNS = 200


def _total(sums: Sums) -> Sums:
    return sums.map(lambda a: a.sum(axis=0))


def _plain(sums: Sums) -> Sums:
    """The same sums without the variance floor (the plain plug-in)."""
    return Sums(sums.y, sums.w, sums.y2, sums.w2, sums.y2)


@pytest.fixture(scope="module")
def final_estimates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per seeded run: the Hájek rates, the raw pooled rates, the estimated variances with
    the variance floor and without it."""
    ipw, naive, variance, plain = [], [], [], []
    for seed in range(RUNS):
        traffic = Traffic(RATES, SHARES, visits=4_000, batch=400)
        *_, state = run(traffic, np.random.default_rng(7_000 + seed))
        cells = Cells.from_snapshot(state.snapshot("e", ("a", "b"), 0), ("a", "b"))
        decisions = np.full(2, cells.decisions.sum())
        floored = hajek_rate(_total(cells.sums), decisions)
        ipw.append(floored.estimate)
        naive.append(cells.conversions.sum(0) / cells.exposures.sum(0))
        variance.append(floored.standard_error**2)
        plain.append(hajek_rate(_plain(_total(cells.sums)), decisions).standard_error ** 2)
    return np.array(ipw), np.array(naive), np.array(variance), np.array(plain)


Estimates = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def test_hajek_rate_is_consistent_where_the_pooled_raw_rate_is_not(
    final_estimates: Estimates,
) -> None:
    ipw, naive, _, _ = final_estimates
    # Over RUNS independent seeded runs the mean estimate has standard error sd/√RUNS.
    # Hájek is consistent, its bias O(1/N): |mean - truth| < 4 se fails with probability
    # 6e-5 (normal tails; the mean of 200 runs is close to normal) unless the bias is
    # comparable to se (~0.0024 here, 4 % of the truth). Biased: the raw rate must sit more
    # than 4 of its own se away from the truth.
    se_ipw = ipw.std(axis=0, ddof=1) / np.sqrt(RUNS)
    se_naive = naive.std(axis=0, ddof=1) / np.sqrt(RUNS)
    assert np.all(np.abs(ipw.mean(axis=0) - TRUTH) < 4 * se_ipw), (ipw.mean(0), se_ipw)
    assert np.all(np.abs(naive.mean(axis=0) - TRUTH) > 4 * se_naive), (naive.mean(0), se_naive)
    assert np.all(naive.mean(axis=0) > TRUTH + 0.01)  # the bias goes where Simpson says
    assert np.all((ipw >= 0.0) & (ipw <= 1.0))


def test_influence_sums_under_adaptive_allocation(final_estimates: Estimates) -> None:
    ipw, _, variance, plain = final_estimates
    # The estimated variance of one run, averaged over the runs, against the variance of
    # the estimate across them. Here the loser of each segment is starved at the floor,
    # so the estimates are heavy-tailed and their sample variance over RUNS runs is
    # uncertain: Var(s²) ≈ (m4 - s⁴)/RUNS with m4 the fourth central moment (about 30 %
    # of s² here), and Var(mean estimated variance) = its sample variance / RUNS. Not below:
    # mean - s² > -3 sd of the difference (normal: fails w.p. 0.1 % per variant for a
    # calibrated estimator; the bound is weak with these tails, the sharp check of the
    # formulas is the Monte Carlo test below with fixed propensities).
    centred = ipw - ipw.mean(axis=0)
    s2 = (centred**2).mean(axis=0)
    var_s2 = ((centred**4).mean(axis=0) - s2**2) / RUNS
    var_mean = variance.var(axis=0, ddof=1) / RUNS
    assert np.all(variance.mean(axis=0) - s2 > -3 * np.sqrt(var_s2 + var_mean))
    # It may be above, by design: the floor shrinks a starved cell toward its segment's
    # rate (here 0.06 against a true 0.02 for the loser), so at most 4x: intervals at most
    # 2x too wide in this deliberately extreme case (a ratio, not a test of chance).
    assert np.all(variance.mean(axis=0) / s2 < 4.0), variance.mean(axis=0) / s2
    # and the floor only ever widens: never below the plain plug-in, run by run
    assert np.all(variance >= plain * (1 - 1e-12))


def _stats(n: float, c: float, w: float, w2: float, y: float, y2: float) -> VariantStats:
    return VariantStats(exposures=int(n), conversions=int(c), ipw_weight=w, ipw_weight_sq=w2,
                        ipw_conversions=y, ipw_conversions_sq=y2)  # fmt: skip


def _snapshot(cells: dict[str, dict[str, tuple[float, ...]]]) -> ExperimentSnapshot:
    """cells: segment → variant → (exposures, conversions, Σ1/p, Σ1/p², Σy/p, Σy/p²)."""
    segments = {
        key: SegmentSnapshot(key, {v: _stats(*sums) for v, sums in variants.items()})
        for key, variants in cells.items()
    }
    return ExperimentSnapshot("e", ("a", "b"), datetime(2026, 11, 29, tzinfo=UTC), segments)


def test_rate_stays_in_the_unit_interval_with_few_conversions_at_small_propensities() -> None:
    # The case that published a rate above 100 %: 300 decisions; a favoured (245 exposures
    # at p = 0.98, 12 conversions); b starved: 50 exposures at p = 0.5 early on, then 5 at
    # the floor p = 0.005, two of which converted. Σy/p of b = 2/0.005 = 400 > 300
    # decisions, so Horvitz–Thompson gives 400/300 = 1.33; Hájek 400 / (100 + 1000) = 0.36.
    a = (245, 12, 245 / 0.98, 245 / 0.98**2, 12 / 0.98, 12 / 0.98**2)
    b = (55, 2, 50 / 0.5 + 5 / 0.005, 50 / 0.25 + 5 / 0.005**2, 2 / 0.005, 2 / 0.005**2)
    cells = Cells.from_snapshot(_snapshot({"s": {"a": a, "b": b}}), ("a", "b"))
    assert cells.y[0, 1] / cells.decisions[0] > 1.0  # what Horvitz–Thompson published
    analysis = analyse(cells)
    for rate in (analysis.rate, analysis.global_rate):
        low, high = analysis.rate_interval(rate)
        assert np.all((rate.estimate >= 0) & (rate.estimate <= 1)), rate.estimate
        assert np.all((low <= rate.estimate) & (rate.estimate <= high)), (low, high)
    assert float(analysis.rate.estimate[0, 1]) == pytest.approx(400 / 1100)
    # and on any data an exposure log can produce: a weighted mean of 0/1 outcomes
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = rng.uniform(0.001, 1.0, 50)
        y = (rng.random(50) < rng.uniform(0, 1)).astype(float)
        sums = Sums(*(np.array(x.sum()) for x in (y / p, 1 / p, y / p**2, 1 / p**2, y / p**2)))
        assert 0.0 <= float(hajek_rate(sums, np.array(60.0)).estimate) <= 1.0


# Per decision: which variant was shown, its propensity, whether it converted.
def _decisions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prob_a = rng.uniform(0.05, 0.95, n)
    shown_a = rng.random(n) < prob_a
    p = np.where(shown_a, prob_a, 1 - prob_a)
    y = (rng.random(n) < np.where(shown_a, 0.3, 0.2)).astype(float)
    return shown_a, p, y


def _sums(mask: np.ndarray, p: np.ndarray, y: np.ndarray) -> Sums:
    z, w = np.where(mask, y / p, 0.0), np.where(mask, 1 / p, 0.0)
    return Sums(*(np.array(x.sum(axis=-1)) for x in (z, w, z / p, w / p, z / p)))


def test_influence_sums_equal_the_per_decision_influences_by_hand() -> None:
    # Brute force: the influence φ_t of every decision from its definition, against the
    # closed forms from the four sums (no variance floor: y2_floor = y2).
    rng = np.random.default_rng(3)
    n = 1000
    shown_a, p, y = _decisions(rng, n)
    z_a, w_a = np.where(shown_a, y / p, 0), np.where(shown_a, 1 / p, 0)
    z_b, w_b = np.where(~shown_a, y / p, 0), np.where(~shown_a, 1 / p, 0)
    mu_a, mu_b = z_a.sum() / w_a.sum(), z_b.sum() / w_b.sum()
    a, b = _sums(shown_a, p, y), _sums(~shown_a, p, y)

    phi = (z_a - mu_a * w_a) / (w_a.sum() / n)
    rate = hajek_rate(a, np.array(float(n)))
    assert float(rate.estimate) == pytest.approx(mu_a)
    assert abs(phi.sum()) < 1e-9
    assert float(rate.influence_ss) == pytest.approx((phi**2).sum(), rel=1e-9)

    phi = (z_a - mu_a * w_a) / (mu_a * w_a.sum() / n) - (z_b - mu_b * w_b) / (mu_b * w_b.sum() / n)
    within = log_ratio_within(a, b, np.array(float(n)))
    assert float(within.estimate) == pytest.approx(np.log(mu_a / mu_b))
    assert float(within.influence_ss) == pytest.approx((phi**2).sum(), rel=1e-9)

    # part to whole: variant a in a segment (the first 300 decisions) against a everywhere
    inside = np.arange(n) < 300
    zs, ws = np.where(inside, z_a, 0.0), np.where(inside, w_a, 0.0)
    mu_s = zs.sum() / ws.sum()
    phi = n * ((zs - mu_s * ws) / zs.sum() - (z_a - mu_a * w_a) / z_a.sum())
    assert abs(phi.sum()) < 1e-9
    part = log_ratio_part_to_whole(_sums(shown_a & inside, p, y), a, np.array(float(n)))
    assert float(part.estimate) == pytest.approx(np.log(mu_s / mu_a))
    assert float(part.influence_ss) == pytest.approx((phi**2).sum(), rel=1e-9)


def test_influence_sums_match_a_monte_carlo_variance() -> None:
    # DRAWS independent experiments of N decisions with the same per-decision propensities
    # (varying from 0.05 to 0.95) and rates 0.3 (a) / 0.2 (b); a segment = the first 600.
    # For each estimator, the mean over the draws of its estimated variance
    # (influence_ss / n², the plain plug-in) against the variance of its estimates across
    # the draws, s². Tolerance from the number of draws: Var(s²) ≈ (m4 - s⁴)/DRAWS (m4 the
    # fourth central moment, ≈ 2 s⁴ / DRAWS for normal estimates: ±3.2 % at 2,000 draws),
    # and the mean estimated variance has Var = its sample variance / DRAWS; 4 sd of the
    # difference fails w.p. 6e-5 for a calibrated estimator. The linearisation's own error
    # is O(1/N) relative (≈ 1/conversions ≈ 0.3 %), far below. Horvitz–Thompson's
    # Σz² - N μ̂² for the Hájek rate would be ~38 % too large here, and dropping the μ̂ w
    # terms of log_ratio_within (Σz²/Z² per variant) ~35 %: both fail.
    draws, n, segment = 2_000, 1_200, 600
    rng = np.random.default_rng(11)
    prob_a = rng.uniform(0.05, 0.95, n)
    shown_a = rng.random((draws, n)) < prob_a
    p = np.where(shown_a, prob_a, 1 - prob_a)
    y = (rng.random((draws, n)) < np.where(shown_a, 0.3, 0.2)).astype(float)
    inside = np.arange(n) < segment
    a_s, b_s = _sums(shown_a & inside, p, y), _sums(~shown_a & inside, p, y)
    estimators = {
        "rate": hajek_rate(a_s, np.array(float(segment))),
        "within": log_ratio_within(a_s, b_s, np.array(float(segment))),
        "part to whole": log_ratio_part_to_whole(a_s, _sums(shown_a, p, y), np.array(float(n))),
    }
    for name, linear in estimators.items():
        estimates, variances = linear.estimate, linear.standard_error**2
        centred = estimates - estimates.mean()
        s2 = float((centred**2).mean())
        var_s2 = float((centred**4).mean() - s2**2) / draws
        var_mean = float(variances.var(ddof=1)) / draws
        tolerance = 4 * np.sqrt(var_s2 + var_mean)
        assert abs(float(variances.mean()) - s2) < tolerance, (name, variances.mean(), s2)
    truth = 0.3
    rate = estimators["rate"].estimate
    assert abs(rate.mean() - truth) < 4 * rate.std(ddof=1) / np.sqrt(draws)


def test_the_variance_floor_never_narrows_and_gives_a_cell_without_conversions_a_variance() -> None:
    # μ̂ = 0.8 (4 of 5 exposures at p = 0.5): in (1 - 2μ̂) Y2 + μ̂² W2 the coefficient of Y2 is
    # negative, so a floor applied to every Y2 would narrow the interval; applied to the
    # converted term (1 - μ̂)² Y2 only, it widens it.
    w, w2, y, y2 = 10.0, 20.0, 8.0, 16.0
    plain = hajek_rate(Sums(*map(np.array, (y, w, y2, w2, y2))), np.array(10.0))
    floored = hajek_rate(Sums(*map(np.array, (y, w, y2, w2, 19.0))), np.array(10.0))
    assert float(plain.estimate) == float(floored.estimate) == pytest.approx(0.8)
    # by hand: (N/W)² ((1 - μ̂)² Y2 + μ̂² (W2 - Y2)) = 0.04·16 + 0.64·4 = 3.2; floored 3.32
    assert float(plain.influence_ss) == pytest.approx(3.2)
    assert float(floored.influence_ss) == pytest.approx(0.04 * 19 + 0.64 * 4)
    # A starved cell that has not converted: μ̂ = 0, but a variance from its floor.
    snap = _snapshot({"s": {"a": (990, 50, 1000, 1010, 50.5, 51.0), "b": (10, 0, 1000, 1e5, 0, 0)}})
    cells = Cells.from_snapshot(snap, ("a", "b"))
    rate = hajek_rate(cells.sums, cells.decisions[:, None])
    assert float(rate.estimate[0, 1]) == 0.0
    # y2_floor = μ̃ W2 with μ̃ = (0 + 20 · 50/1000) / (10 + 20) = 1/30: Σφ² = (N/W)² μ̃ W2
    assert float(rate.influence_ss[0, 1]) == pytest.approx((1000 / 1000) ** 2 * 1e5 / 30)


def test_empty_and_zero_cells_give_nan_not_errors() -> None:
    zero = Sums(*(np.zeros(3) for _ in range(5)))
    assert np.isnan(hajek_rate(zero, np.zeros(3)).estimate).all()
    assert np.isnan(hajek_rate(zero, np.full(3, 100.0)).estimate).all()  # no exposure of v
    assert np.isnan(log_ratio_within(zero, zero, np.zeros(3)).t).all()
    assert np.isnan(log_ratio_part_to_whole(zero, zero, np.zeros(3)).t).all()
