"""In-memory traffic simulators with known conversion rates, for benchmarks.

Two harnesses:

* `simulate`: contextual traffic. A `Scenario` fixes the truth: conversion
  rate per (segment, variant), each segment's traffic share, and a simulated
  clock (`visits_per_second`), so that `discount` (share of evidence kept per
  minute) forgets at the rate it would in production: counts are decayed with
  `posterior.decay_factor` by the simulated time between updates, exactly as
  the pipeline decays its stored counts. It reports expected regret against
  the per-segment oracle (the best variant of the visitor's segment),
  expected conversions, how fast each segment's best variant takes over its
  traffic, and the share of the best variant in the last tenth of the visits
  (after the change in drifting scenarios).
* `simulate_resets`: Chapelle & Li's (2011) non-stationary, delayed-feedback
  benchmark, non-contextual: K arms with rates ~ Beta(4, 4); at every step,
  with probability `change_probability`, one arm (uniformly chosen) gets a
  new rate and its counts are reset; feedback reaches the posteriors in
  batches every `delay` steps. Vectorised per batch (the allocation is fixed
  within a batch), so 10^6 steps take seconds.

In `simulate`, like the production pipeline, weights are recomputed
rate-limited: a segment's weights after every `refresh_every` (default 10) of
its visits, and only if the counts changed since; the pooled policy's
`PoolingEstimate` (all segments) every 100 visits. Posteriors are updated
every `update_every` visits of the scenario (1 normally, 500 in `delayed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streams.core.decide import CumulativeWeights
from streams.core.policies import Policy
from streams.core.posterior import Counts, PoolingEstimate, decay_factor, pooling_from_arrays

POOLING_REFRESH_VISITS = 100
BEST_SHARE_WINDOW = 100
"""visits_to_95 looks at the mean allocation to the best variant over a
segment's last 100 visits."""
TAKEOVER_SHARE = 0.95
FINAL_SHARE_PART = 0.1
"""`final_best_share` looks at the last 10 % of the visits."""
_CHECKPOINTS = 20


@dataclass(frozen=True, eq=False)
class Scenario:
    """Ground truth: rates (segments x variants), traffic shares, update cadence.

    `visits_per_second`: the simulated clock (visit i happens at i /
    visits_per_second seconds), which sets how much a time `discount` forgets
    between updates.
    """

    name: str
    rates: np.ndarray
    shares: np.ndarray
    update_every: int = 1
    drift_rates: np.ndarray | None = None
    drift_at: float = 0.5
    visits_per_second: float = 10.0

    def __post_init__(self) -> None:
        rates = np.asarray(self.rates, dtype=float)
        shares = np.asarray(self.shares, dtype=float)
        if rates.ndim != 2 or shares.shape != (rates.shape[0],):
            message = f"rates must be segments x variants and shares one per segment ({self.name})"
            raise ValueError(message)
        if np.any((rates < 0) | (rates > 1)):
            message = f"rates must be probabilities ({self.name})"
            raise ValueError(message)
        if not self.visits_per_second > 0.0:
            message = f"visits_per_second must be > 0 ({self.name})"
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
    final_best_share: float
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
    traffic never get there). final_best_share: share of the last 10 % of the
    visits that got their segment's best variant (the best after the change).
    """
    rng = np.random.default_rng(seed)
    segments, variants = scenario.segments, scenario.variants
    visitor_segments = rng.choice(segments, size=visits, p=scenario.shares).tolist()
    choice_draws = rng.random(visits).tolist()
    conversion_draws = rng.random(visits).tolist()
    holdout_share = policy.settings.holdout_share
    holdout_draws = rng.random(visits).tolist() if holdout_share > 0 else None
    discount = policy.settings.discount
    seconds_per_visit = 1.0 / scenario.visits_per_second
    final_part_from = visits - max(1, int(FINAL_SHARE_PART * visits))
    last_update = 0
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
    realised = best_chosen = final_best = 0

    def forget(visit: int) -> None:
        """Decay every count by the simulated time since the last update."""
        nonlocal last_update
        factor = decay_factor(discount, (visit - last_update) * seconds_per_visit)
        last_update = visit
        if factor < 1.0:
            for array in (exposures, conversions, total_exposures, total_conversions):
                array *= factor

    def record(segment: int, variant: int, converted: bool) -> None:
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
        if visit >= final_part_from:
            final_best += variant == best_variant

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
            forget(visit + 1)
            record(segment, variant, converted)
            data_version += 1
        else:
            pending.append((segment, variant, converted))
            if (visit + 1) % scenario.update_every == 0:
                forget(visit + 1)
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
        final_best_share=final_best / (visits - final_part_from) if visits else 0.0,
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


@dataclass(frozen=True)
class ResetScenario:
    """Chapelle & Li's non-stationary, delayed-feedback benchmark (see `simulate_resets`)."""

    name: str = "chapelle-li"
    variants: int = 10
    rate_prior: tuple[float, float] = (4.0, 4.0)
    change_probability: float = 1e-3
    delay: int = 100

    def __post_init__(self) -> None:
        if self.variants < 2 or self.delay < 1 or not 0.0 <= self.change_probability < 1.0:
            message = (
                f"need >= 2 variants, delay >= 1 step and a change probability in [0, 1) "
                f"({self.name})"
            )
            raise ValueError(message)


Allocator = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], tuple[np.ndarray, float]]
"""(exposures, conversions, steps, rng) -> (the arm shown at each of `steps`
steps, the smallest probability any arm had, nan when not known)."""


def policy_allocator(policy: Policy) -> Allocator:
    """Draws `steps` decisions from the policy's weights (computed once: nothing is
    learnt within a batch), by inverse CDF of the injected generator's uniforms."""

    def allocate(
        exposures: np.ndarray, conversions: np.ndarray, steps: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, float]:
        counts = Counts(exposures, conversions)
        probabilities = policy.weights(counts, counts).probabilities
        cumulative = np.cumsum(probabilities)
        arms = np.searchsorted(cumulative, rng.random(steps) * cumulative[-1], side="right")
        # u * total may round up to total: the last arm that can be shown.
        last = int(np.flatnonzero(probabilities > 0.0)[-1])
        return np.minimum(arms, last), float(probabilities.min())

    return allocate


def sampled_thompson(
    exposures: np.ndarray, conversions: np.ndarray, steps: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Plain Thompson sampling, the reference: at each step one draw per arm from
    Beta(1 + conversions, 1 + failures), show the arm with the highest draw."""
    draws = rng.beta(1.0 + conversions, 1.0 + exposures - conversions, (steps, exposures.size))
    return draws.argmax(axis=1), float("nan")


@dataclass(frozen=True)
class ResetResult:
    regret: float
    best_share: float
    min_probability: float


def simulate_resets(
    allocate: Allocator, scenario: ResetScenario, steps: int, seed: int
) -> ResetResult:
    """Run `allocate` for `steps` steps of `scenario`; deterministic in `seed`.

    The environment (initial rates, when which arm changes to which rate, the
    uniforms that decide rewards) comes from its own generator, so every
    allocator run with the same seed faces the same world (common random
    numbers); decisions use a second generator. Regret: sum over steps of
    (best rate now - rate of the arm shown). A change happens before the
    step's decision; the changed arm's delivered and pending counts are
    reset (its feedback from before the change is dropped). The allocation is
    recomputed at each delivery, every `delay` steps.
    """
    environment = np.random.default_rng([seed, 0])
    decisions = np.random.default_rng([seed, 1])
    k = scenario.variants
    rates = environment.beta(*scenario.rate_prior, size=k)
    change_steps = np.flatnonzero(environment.random(steps) < scenario.change_probability)
    changed_arms = environment.integers(k, size=change_steps.size)
    new_rates = environment.beta(*scenario.rate_prior, size=change_steps.size)
    reward_draws = environment.random(steps)

    exposures = np.zeros(k)
    conversions = np.zeros(k)
    regret = 0.0
    best_chosen = 0
    min_probability = float("inf")
    change = 0
    for start in range(0, steps, scenario.delay):
        stop = min(start + scenario.delay, steps)
        arms, smallest = allocate(exposures.copy(), conversions.copy(), stop - start, decisions)
        min_probability = min(min_probability, smallest)
        pending_exposures = np.zeros(k)
        pending_conversions = np.zeros(k)
        block = start
        while block < stop:
            changes_now = change < change_steps.size and change_steps[change] < stop
            block_stop = int(change_steps[change]) if changes_now else stop
            if block_stop > block:
                chosen = arms[block - start : block_stop - start]
                chosen_rates = rates[chosen]
                regret += float(rates.max()) * chosen.size - float(chosen_rates.sum())
                best_chosen += int(np.count_nonzero(chosen == int(rates.argmax())))
                rewards = reward_draws[block:block_stop] < chosen_rates
                pending_exposures += np.bincount(chosen, minlength=k)
                pending_conversions += np.bincount(chosen, weights=rewards, minlength=k)
            if changes_now:
                arm = int(changed_arms[change])
                rates[arm] = new_rates[change]
                exposures[arm] = conversions[arm] = 0.0
                pending_exposures[arm] = pending_conversions[arm] = 0.0
                change += 1
            block = block_stop
        exposures += pending_exposures
        conversions += pending_conversions
    return ResetResult(
        regret=regret,
        best_share=best_chosen / steps if steps else 0.0,
        min_probability=min_probability if np.isfinite(min_probability) else float("nan"),
    )
