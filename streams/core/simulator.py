"""In-memory traffic simulator with known conversion rates, for benchmarks.

A scenario fixes the truth: conversion rate per (segment, variant) and each
segment's traffic share. `simulate` runs a policy over N visits with a seeded
Generator and reports expected regret against the per-segment oracle (the
best variant of the visitor's segment), expected conversions, and how fast
each segment's best variant takes over its traffic.

Like the production pipeline, weights are recomputed rate-limited: a
segment's weights after every `refresh_every` (default 10) of its visits,
and only if the counts changed since; the pooled policy's `PoolingEstimate`
(all segments) every 100 visits. Posteriors are updated every
`update_every` visits of the scenario (1 normally, 500 in `delayed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streams.core.decide import CumulativeWeights
from streams.core.policies import Policy
from streams.core.posterior import Counts, PoolingEstimate, pooling_from_arrays

POOLING_REFRESH_VISITS = 100
BEST_SHARE_WINDOW = 100
"""visits_to_95 looks at the mean allocation to the best variant over a
segment's last 100 visits."""
TAKEOVER_SHARE = 0.95
_CHECKPOINTS = 20


@dataclass(frozen=True, eq=False)
class Scenario:
    """Ground truth: rates (segments x variants), traffic shares, update cadence."""

    name: str
    rates: np.ndarray
    shares: np.ndarray
    update_every: int = 1
    drift_rates: np.ndarray | None = None
    drift_at: float = 0.5

    def __post_init__(self) -> None:
        rates = np.asarray(self.rates, dtype=float)
        shares = np.asarray(self.shares, dtype=float)
        if rates.ndim != 2 or shares.shape != (rates.shape[0],):
            message = f"rates must be segments x variants and shares one per segment ({self.name})"
            raise ValueError(message)
        if np.any((rates < 0) | (rates > 1)):
            message = f"rates must be probabilities ({self.name})"
            raise ValueError(message)
        if self.drift_rates is not None and np.shape(self.drift_rates) != rates.shape:
            message = f"drift_rates must have the shape of rates ({self.name})"
            raise ValueError(message)
        object.__setattr__(self, "rates", rates)
        object.__setattr__(self, "shares", shares / shares.sum())

    @property
    def segments(self) -> int:
        return int(self.rates.shape[0])

    @property
    def variants(self) -> int:
        return int(self.rates.shape[1])


@dataclass(frozen=True, eq=False)
class SimulationResult:
    regret: float
    regret_by_segment: np.ndarray
    expected_conversions: float
    uniform_conversions: float
    conversions: int
    best_share: float
    visits_to_95: int | None
    checkpoints: np.ndarray
    regret_over_time: np.ndarray
    best_share_over_time: np.ndarray
    weight_computations: int

    @property
    def conversions_vs_uniform(self) -> float:
        """Relative gain in expected conversions over an equal split of the same visitors."""
        return self.expected_conversions / self.uniform_conversions - 1.0


def _weighted_median_time(reached: list[float], shares: np.ndarray) -> int | None:
    """Visit by which segments with half of the traffic reached the takeover share."""
    order = np.argsort(reached, kind="stable")
    covered = np.cumsum(shares[order])
    when = reached[int(order[np.searchsorted(covered, 0.5 - 1e-12)])]
    return None if when == float("inf") else int(when)


def simulate(
    policy: Policy,
    scenario: Scenario,
    visits: int,
    seed: int,
    refresh_every: int = 10,
) -> SimulationResult:
    """Run `policy` on `visits` visitors of `scenario`; deterministic in `seed`.

    visits_to_95: per segment, the first visit index at which the mean
    probability given to the segment's best variant over its last 100 visits
    is >= 0.95 (after the change in drifting scenarios); then the
    traffic-weighted median over segments (None if segments with half of the
    traffic never get there).
    """
    rng = np.random.default_rng(seed)
    segments, variants = scenario.segments, scenario.variants
    visitor_segments = rng.choice(segments, size=visits, p=scenario.shares).tolist()
    choice_draws = rng.random(visits).tolist()
    conversion_draws = rng.random(visits).tolist()
    holdout_share = policy.settings.holdout_share
    holdout_draws = rng.random(visits).tolist() if holdout_share > 0 else None
    gamma = policy.settings.discount
    drift_visit = int(scenario.drift_at * visits) if scenario.drift_rates is not None else -1
    uniform = CumulativeWeights.from_probabilities(np.full(variants, 1.0 / variants))

    rates = scenario.rates.tolist()
    best = [int(np.argmax(row)) for row in rates]
    mean_rate = [sum(row) / variants for row in rates]
    exposures = np.zeros((segments, variants))
    conversions = np.zeros((segments, variants))
    total_exposures = np.zeros(variants)
    total_conversions = np.zeros(variants)
    pending: list[tuple[int, int, bool]] = []
    data_version = 0

    cached: list[CumulativeWeights | None] = [None] * segments
    cached_version = [-1] * segments
    visits_since_refresh = [0] * segments
    pooling: PoolingEstimate | None = None
    pooling_visit = -POOLING_REFRESH_VISITS
    computations = 0

    window = [[0.0] * BEST_SHARE_WINDOW for _ in range(segments)]
    window_sum = [0.0] * segments
    window_count = [0] * segments
    reached = [float("inf")] * segments
    checkpoint_every = max(1, visits // _CHECKPOINTS)
    checkpoints: list[int] = []
    regret_over_time: list[float] = []
    best_share_over_time: list[list[float]] = []

    regret = expected = uniform_expected = 0.0
    regret_by_segment = [0.0] * segments
    realised = best_chosen = 0

    def record(segment: int, variant: int, converted: bool) -> None:
        if gamma < 1.0:
            for array in (exposures[segment], conversions[segment]):
                array *= gamma
            total_exposures[:] *= gamma
            total_conversions[:] *= gamma
        exposures[segment, variant] += 1.0
        total_exposures[variant] += 1.0
        if converted:
            conversions[segment, variant] += 1.0
            total_conversions[variant] += 1.0

    for visit in range(visits):
        if visit == drift_visit and scenario.drift_rates is not None:
            rates = np.asarray(scenario.drift_rates).tolist()
            best = [int(np.argmax(row)) for row in rates]
            mean_rate = [sum(row) / variants for row in rates]
            window_count = [0] * segments
            window_sum = [0.0] * segments
            reached = [float("inf")] * segments
        segment = visitor_segments[visit]
        weights = cached[segment]
        if weights is None or (
            visits_since_refresh[segment] >= refresh_every
            and cached_version[segment] != data_version
        ):
            if policy.uses_pooling and visit - pooling_visit >= POOLING_REFRESH_VISITS:
                pooling = pooling_from_arrays(exposures, conversions)
                pooling_visit = visit
            allocation = policy.weights(
                Counts(exposures[segment], conversions[segment]),
                Counts(total_exposures, total_conversions),
                pooling,
            )
            weights = CumulativeWeights.from_probabilities(allocation.probabilities)
            cached[segment] = weights
            cached_version[segment] = data_version
            visits_since_refresh[segment] = 0
            computations += 1
        visits_since_refresh[segment] += 1
        if holdout_draws is not None and holdout_draws[visit] < holdout_share:
            weights = uniform
        variant, _ = weights.choose(choice_draws[visit])

        row = rates[segment]
        best_variant = best[segment]
        regret += row[best_variant] - row[variant]
        regret_by_segment[segment] += row[best_variant] - row[variant]
        expected += row[variant]
        uniform_expected += mean_rate[segment]
        converted = conversion_draws[visit] < row[variant]
        realised += converted
        best_chosen += variant == best_variant

        slot = window_count[segment] % BEST_SHARE_WINDOW
        share_of_best = weights.probabilities[best_variant]
        window_sum[segment] += share_of_best - (
            window[segment][slot] if window_count[segment] >= BEST_SHARE_WINDOW else 0.0
        )
        window[segment][slot] = share_of_best
        window_count[segment] += 1
        if (
            window_count[segment] >= BEST_SHARE_WINDOW
            and reached[segment] == float("inf")
            and window_sum[segment] >= TAKEOVER_SHARE * BEST_SHARE_WINDOW
        ):
            reached[segment] = visit + 1

        if scenario.update_every == 1:
            record(segment, variant, converted)
            data_version += 1
        else:
            pending.append((segment, variant, converted))
            if (visit + 1) % scenario.update_every == 0:
                for update in pending:
                    record(*update)
                pending.clear()
                data_version += 1

        if (visit + 1) % checkpoint_every == 0:
            checkpoints.append(visit + 1)
            regret_over_time.append(regret)
            best_share_over_time.append(
                [
                    window_sum[s] / max(1, min(window_count[s], BEST_SHARE_WINDOW))
                    for s in range(segments)
                ]
            )

    return SimulationResult(
        regret=regret,
        regret_by_segment=np.asarray(regret_by_segment),
        expected_conversions=expected,
        uniform_conversions=uniform_expected,
        conversions=realised,
        best_share=best_chosen / visits if visits else 0.0,
        visits_to_95=_weighted_median_time(reached, scenario.shares),
        checkpoints=np.asarray(checkpoints),
        regret_over_time=np.asarray(regret_over_time),
        best_share_over_time=np.asarray(best_share_over_time),
        weight_computations=computations,
    )


def heterogeneous() -> Scenario:
    """The best variant differs by segment (3 variants, 6 segments)."""
    return Scenario(
        "heterogeneous",
        rates=np.array(
            [
                [0.040, 0.055, 0.035],  # desktop, new: B best (+38 %)
                [0.090, 0.070, 0.065],  # desktop, returning: A best (+29 %)
                [0.020, 0.016, 0.030],  # mobile, new: C best (+50 %)
                [0.060, 0.080, 0.055],  # mobile, returning: B best (+33 %)
                [0.030, 0.028, 0.045],  # tablet: C best (+50 %)
                [0.120, 0.095, 0.090],  # app: A best (+26 %)
            ]
        ),
        shares=np.array([0.25, 0.20, 0.18, 0.15, 0.12, 0.10]),
    )


_HOMOGENEOUS_BASE = np.array([0.04, 0.09, 0.02, 0.06, 0.035, 0.12])


def homogeneous() -> Scenario:
    """Segments convert at different baselines, but B is +12 % everywhere."""
    return Scenario(
        "homogeneous",
        rates=np.outer(_HOMOGENEOUS_BASE, [1.00, 1.12, 0.95]),
        shares=np.array([0.25, 0.20, 0.18, 0.15, 0.12, 0.10]),
    )


def sparse() -> Scenario:
    """60 small segments (Zipf shares) that differ little: B +12 %, +-3 % by segment."""
    layout = np.random.default_rng(60)
    segments = 60
    shares = 1.0 / np.arange(1, segments + 1)
    base = np.clip(0.04 * np.exp(layout.normal(0.0, 0.5, segments)), 0.015, 0.12)
    lifts = np.array([1.00, 1.12, 0.95]) * np.exp(layout.normal(0.0, 0.03, (segments, 3)))
    return Scenario("sparse", rates=base[:, None] * lifts, shares=shares)


def drift() -> Scenario:
    """Halfway through, B's novelty wears off: B goes from +15 % to -10 %, C to +12 %."""
    base = np.array([0.05, 0.03, 0.08, 0.02])
    return Scenario(
        "drift",
        rates=np.outer(base, [1.00, 1.15, 0.95]),
        shares=np.array([0.4, 0.3, 0.2, 0.1]),
        drift_rates=np.outer(base, [1.00, 0.90, 1.12]),
        drift_at=0.5,
    )


def delayed() -> Scenario:
    """`heterogeneous` traffic, but posteriors are updated only every 500 visits."""
    truth = heterogeneous()
    return Scenario("delayed", rates=truth.rates, shares=truth.shares, update_every=500)


SCENARIOS = {
    scenario.__name__: scenario for scenario in (heterogeneous, homogeneous, sparse, drift, delayed)
}
"""Scenario factories by name."""
