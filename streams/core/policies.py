"""Allocation policies, selectable by name per experiment.

Every policy answers one question: given the counts of this visitor's segment
and of the whole experiment, with which probability should each variant be
shown? Thompson sampling answers with P(variant is best | data), computed
exactly by quadrature (`weights.prob_best`), then floored so that no variant
is starved.

The floor, and what it costs. Off-policy evaluation divides by logged
propensities, so they must stay away from 0; but a floor that every variant
keeps forever is paid forever: a fixed 1 % for each of 10 variants sends about
9 % of all traffic to variants known to be worse, and tripled the regret of
Thompson sampling in Chapelle & Li's 10-arm benchmark (`bandit-stream bench
policies --scenario chapelle-li`). So the floor decays with the evidence. With
N = the experiment's total exposures in the counts the weights are computed
from (time-discounted when `discount` < 1), every variant gets at least

    floor_level = floor * min(1, sqrt(floor_evidence / N)),

and `weights.apply_floor` raises only the variants below that level, taking
the deficit from the others (the policy pays the deficit, not k * floor).
Guarantee: every allocation of every policy (and so every logged propensity)
is >= floor * min(1, sqrt(floor_evidence / N)); burn-in, holdout and uniform
allocations give 1/k. With the defaults (floor 0.01, floor_evidence 50) that
is 1 % up to 50 exposures, 0.07 % at 10^4 and 0.007 % at 10^6; an analyst who
needs more sets `floor_evidence` higher and pays for it. Why the square root:
the exploration it forces grows as sqrt(N) (at most 2 k floor
sqrt(floor_evidence N) visits over N, 140 per variant at N = 10^6), a
vanishing share of the traffic, while the inverse propensities an IPS
estimate over those N visits divides by sum to O(N^1.5), so its standard
error still shrinks (as N^-1/4 at worst, for a target policy that favours the
least-shown variant); a 1/N decay would cost less but leave that error
constant. Measured in that benchmark (delay 100, 10^6 steps, 5 seeds):
regret 1.12x plain Thompson sampling with floor_evidence 50 (about 1.18x with
100), against 2.75x with the fixed floor. With `discount` < 1 the discounted N
levels off (at about visits per minute / -ln(discount)), and so does the
floor. `floor_evidence` = inf keeps the floor fixed (without the uniform
mixing the old floor used).

Policies differ only in which posterior they use:

* ``uniform``: equal split, the benchmark baseline.
* ``global``: the experiment's totals; ignores the segment.
* ``segment``: the segment's own counts, warm-started from the rest of the
  traffic at a small effective sample size; below `min_samples_per_segment`
  the global posterior decides (hard switch).
* ``pooled``: empirical-Bayes shrinkage, no hard switch. The segment's prior
  for each variant is the variant's rate in the other segments, scaled by
  this segment's baseline, with a strength set by how much variant effects
  differ between segments (`posterior.estimate_pooling`). A segment moves away
  from the global answer exactly as fast as its own evidence outweighs that
  prior; where segments agree, it is nearly the global policy.

`global_` counts are the experiment totals INCLUDING the segment; the
segment's own counts are subtracted to form "rest of traffic" priors so that
no evidence is counted twice. Burn-in looks at the counts the policy decides
from: the segment's for ``segment`` above its minimum, else the experiment's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import numpy as np

from streams.core.posterior import (
    Counts,
    PoolingEstimate,
    posterior_parameters,
    prior_strength,
    segment_baseline,
)
from streams.core.weights import MIN_RELIABLE_ALPHA, MIN_RELIABLE_BETA, apply_floor, prob_best

POLICY_NAMES = ("uniform", "global", "segment", "pooled")
DEFAULT_POLICY = "pooled"
SOURCES = ("segment", "pooled", "global", "uniform", "burn_in")

EXPLORATION_PRESETS: Mapping[str, float] = {
    "default": 1.0,
    "aggressive": 0.5,
    "conservative": 2.0,
}
"""Posterior tempering per preset: Beta(a, b) becomes Beta(t a, t b).

The mean is unchanged and the variance is multiplied by about 1/t, i.e. the
posterior behaves as if it had t times the evidence. ``aggressive`` (t = 0.5)
explores more: the posterior is as wide as with half the data.
``conservative`` (t = 2) explores less: it commits as if it had twice the
data. ``default`` (t = 1) is plain Thompson sampling.
"""

_MIN_PRIOR_STRENGTH = 2.0
_RATE_CLIP = 1e-6


@dataclass(frozen=True)
class PolicySettings:
    """Per-experiment policy knobs; validated on construction.

    `floor`, `floor_evidence`: every variant gets at least
    floor * min(1, sqrt(floor_evidence / N)), N = the experiment's total
    exposures (see the module docstring for the trade-off); floor_evidence in
    exposures, inf = a fixed floor. `burn_in`: uniform (source "burn_in")
    until every variant has this many exposures. `discount`: gamma in (0, 1],
    the share of evidence kept per minute, for whoever stores the counts
    (`posterior.decay_factor`, `posterior.decayed`): evidence t minutes old
    weighs gamma^t, half-life = ln 0.5 / ln gamma minutes (0.99: 69 min,
    0.9: 6.6 min); 1 = never forget. `holdout_share`: share of visitors who
    always get the uniform split (`decide.in_holdout`). `pooling_strength`:
    prior strength in exposures for ``pooled`` when no `PoolingEstimate` is
    given. 100 (exposures): measured without an estimate, 100 stays within
    1.1x the segment policy's regret in `heterogeneous` (300: 1.4x, 1000: 3x)
    at the price of 1.8x the global policy's in `homogeneous`; a fixed
    strength cannot be right for both, which is why the estimate exists.
    """

    exploration: str = "default"
    floor: float = 0.01
    floor_evidence: float = 50.0
    burn_in: int = 0
    discount: float = 1.0
    holdout_share: float = 0.0
    min_samples_per_segment: int = 100
    warm_start_ess: float = 10.0
    pooling_strength: float = 100.0

    def __post_init__(self) -> None:
        problems = []
        if self.exploration not in EXPLORATION_PRESETS:
            presets = sorted(EXPLORATION_PRESETS)
            problems.append(f"exploration must be one of {presets}, got {self.exploration!r}")
        if not 0.0 <= self.floor < 0.5:
            problems.append(f"floor must be in [0, 0.5) (and below 1/variants), got {self.floor!r}")
        if not self.floor_evidence > 0.0:
            problems.append(
                f"floor_evidence must be > 0 exposures (inf = fixed floor), "
                f"got {self.floor_evidence!r}"
            )
        if self.burn_in < 0:
            problems.append(f"burn_in must be >= 0 exposures, got {self.burn_in!r}")
        if not 0.0 < self.discount <= 1.0:
            problems.append(
                f"discount must be in (0, 1] (1 = no forgetting), got {self.discount!r}"
            )
        if not 0.0 <= self.holdout_share <= 0.5:
            problems.append(f"holdout_share must be in [0, 0.5], got {self.holdout_share!r}")
        if self.min_samples_per_segment < 0:
            problems.append(
                f"min_samples_per_segment must be >= 0, got {self.min_samples_per_segment!r}"
            )
        if not self.warm_start_ess > 0.0:
            problems.append(f"warm_start_ess must be > 0, got {self.warm_start_ess!r}")
        if not self.pooling_strength > 0.0:
            problems.append(f"pooling_strength must be > 0, got {self.pooling_strength!r}")
        if problems:
            message = "invalid policy settings: " + "; ".join(problems)
            raise ValueError(message)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PolicySettings:
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            message = f"unknown policy settings {unknown}; known: {sorted(known)}"
            raise ValueError(message)
        return cls(**dict(values))

    @property
    def tempering(self) -> float:
        return EXPLORATION_PRESETS[self.exploration]


@dataclass(frozen=True, eq=False)
class Allocation:
    """Probabilities per variant (sum 1, each >= the floor level) and what decided them."""

    probabilities: np.ndarray
    source: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            message = f"allocation source must be one of {SOURCES}, got {self.source!r}"
            raise ValueError(message)
        probabilities = np.array(self.probabilities, dtype=float)
        probabilities.flags.writeable = False
        object.__setattr__(self, "probabilities", probabilities)


class Policy(Protocol):
    """What the pipeline and the simulator need from a policy."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> PolicySettings: ...

    @property
    def uses_pooling(self) -> bool:
        """Whether `weights` uses a `PoolingEstimate` (worth computing one)."""
        ...

    def weights(
        self, segment: Counts, global_: Counts, pooling: PoolingEstimate | None = None
    ) -> Allocation:
        """Allocation for a visitor of `segment` (`global_` = experiment totals).

        `pooling`: `posterior.estimate_pooling` over all of the experiment's
        segments, if the caller has it (used by `pooled` only; refresh it
        rate-limited, e.g. every few seconds, not per visit).
        """
        ...


def floor_level(floor: float, floor_evidence: float, exposures: float) -> float:
    """The floor after `exposures` of evidence: floor * min(1, sqrt(floor_evidence / N))."""
    if exposures <= floor_evidence:
        return floor
    return floor * math.sqrt(floor_evidence / exposures)


def thompson_probabilities(
    components: Sequence[tuple[float, np.ndarray, np.ndarray]], tempering: float = 1.0
) -> np.ndarray:
    """P(best) of tempered Beta posteriors, averaged over a mixture.

    `components` = [(weight, alpha, beta), ...] (a prior with an uncertain
    strength); Beta(alpha, beta) is tempered to Beta(t alpha, t beta).
    Parameters are raised to the smallest values for which `prob_best`'s
    error is guaranteed (`MIN_RELIABLE_ALPHA` = 0.005, `MIN_RELIABLE_BETA` =
    0.1): only a pooled prior around a rate below 0.25 % with no conversion
    yet reaches them, and there P(best) is ~0 either way.
    """
    probabilities = np.zeros(components[0][1].size)
    for weight, alpha, beta in components:
        probabilities += weight * prob_best(
            np.maximum(alpha * tempering, MIN_RELIABLE_ALPHA),
            np.maximum(beta * tempering, MIN_RELIABLE_BETA),
        )
    return probabilities


def uniform_allocation(variants: int, source: str = "uniform") -> Allocation:
    return Allocation(np.full(variants, 1.0 / variants), source)


def _rest_of_traffic(segment: Counts, global_: Counts) -> tuple[np.ndarray, np.ndarray]:
    exposures = np.maximum(global_.exposures - segment.exposures, 0.0)
    conversions = np.clip(global_.conversions - segment.conversions, 0.0, exposures)
    return exposures, conversions


@dataclass(frozen=True)
class _BasePolicy:
    settings: PolicySettings
    name: ClassVar[str] = ""
    uses_pooling: ClassVar[bool] = False

    def weights(
        self, segment: Counts, global_: Counts, pooling: PoolingEstimate | None = None
    ) -> Allocation:
        if segment.variants != global_.variants:
            message = (
                f"segment counts have {segment.variants} variants "
                f"but global counts have {global_.variants}"
            )
            raise ValueError(message)
        if pooling is not None and pooling.variant_rates.size != segment.variants:
            message = (
                f"pooling estimate has {pooling.variant_rates.size} variants "
                f"but the counts have {segment.variants}"
            )
            raise ValueError(message)
        variants = segment.variants
        if self.settings.floor * variants >= 1.0:
            message = (
                f"floor {self.settings.floor} is too high for {variants} variants "
                f"(must be below 1/{variants})"
            )
            raise ValueError(message)
        return self._allocate(segment, global_, pooling)

    def _allocate(
        self, segment: Counts, global_: Counts, pooling: PoolingEstimate | None
    ) -> Allocation:
        raise NotImplementedError

    def _thompson(
        self,
        components: list[tuple[float, np.ndarray, np.ndarray]],
        used: Counts,
        experiment: Counts,
        source: str,
    ) -> Allocation:
        """Floored P(best) of the tempered posterior(s), unless still burning in.

        `used`: the counts burn-in looks at; `experiment`: the totals whose
        exposures set the floor level (`floor_level`).
        """
        variants = used.variants
        if self.settings.burn_in and float(used.exposures.min()) < self.settings.burn_in:
            return uniform_allocation(variants, "burn_in")
        probabilities = thompson_probabilities(components, self.settings.tempering)
        level = floor_level(
            self.settings.floor, self.settings.floor_evidence, experiment.total_exposures
        )
        return Allocation(apply_floor(probabilities, level), source)


class UniformPolicy(_BasePolicy):
    name = "uniform"

    def _allocate(
        self, segment: Counts, global_: Counts, pooling: PoolingEstimate | None
    ) -> Allocation:
        return uniform_allocation(segment.variants)


class GlobalPolicy(_BasePolicy):
    name = "global"

    def _allocate(
        self, segment: Counts, global_: Counts, pooling: PoolingEstimate | None
    ) -> Allocation:
        alpha, beta = posterior_parameters(global_)
        return self._thompson([(1.0, alpha, beta)], global_, global_, "global")


class SegmentPolicy(_BasePolicy):
    name = "segment"

    def _allocate(
        self, segment: Counts, global_: Counts, pooling: PoolingEstimate | None
    ) -> Allocation:
        if segment.total_exposures < self.settings.min_samples_per_segment:
            alpha, beta = posterior_parameters(global_)
            return self._thompson([(1.0, alpha, beta)], global_, global_, "global")
        rest_exposures, rest_conversions = _rest_of_traffic(segment, global_)
        rest_mean = (1.0 + rest_conversions) / (2.0 + rest_exposures)
        strength = np.minimum(self.settings.warm_start_ess, 2.0 + rest_exposures)
        alpha, beta = posterior_parameters(
            segment, strength * rest_mean, strength * (1.0 - rest_mean)
        )
        return self._thompson([(1.0, alpha, beta)], segment, global_, "segment")


class PooledPolicy(_BasePolicy):
    """Each variant's prior in the segment: Beta(m mu, m (1 - mu)) with mu = the
    segment's baseline x the variant's rate in the other segments, and m set
    so that the prior's relative variance is nu^2 (real differences between
    segments) + the uncertainty of that rate. P(best) is averaged over the
    posterior of nu^2 (3 nodes). Without a `PoolingEstimate`, mu comes from the
    rest of the traffic and m = `pooling_strength`.
    """

    name = "pooled"
    uses_pooling = True

    def _allocate(
        self, segment: Counts, global_: Counts, pooling: PoolingEstimate | None
    ) -> Allocation:
        rest_exposures, rest_conversions = _rest_of_traffic(segment, global_)
        if pooling is None:
            rates = (1.0 + rest_conversions) / (2.0 + rest_exposures)
            mean = _prior_mean(segment_baseline(segment, rates) * rates)
            priors = [(1.0, np.full(segment.variants, self.settings.pooling_strength))]
        else:
            rates, rate_variances = pooling.leave_out(segment)
            mean = _prior_mean(segment_baseline(segment, rates, pooling.heterogeneity) * rates)
            priors = [
                (float(weight), prior_strength(mean, node + rate_variances))
                for node, weight in zip(
                    pooling.heterogeneity_nodes, pooling.heterogeneity_weights, strict=True
                )
            ]
        mixture = []
        for weight, strength in priors:
            # Never more confident than the evidence the prior is built from. Counted
            # in exposures, this also weakens the prior of a low-converting segment
            # (README, "A known inconsistency"): measured, removing it cost more than
            # it gained.
            capped = np.clip(strength, _MIN_PRIOR_STRENGTH, 2.0 + rest_exposures)
            alpha, beta = posterior_parameters(segment, capped * mean, capped * (1.0 - mean))
            mixture.append((weight, alpha, beta))
        return self._thompson(mixture, global_, global_, "pooled")


def _prior_mean(rates: np.ndarray) -> np.ndarray:
    return np.clip(rates, _RATE_CLIP, 1.0 - _RATE_CLIP)


_POLICIES: Mapping[str, type[_BasePolicy]] = {
    policy.name: policy for policy in (UniformPolicy, GlobalPolicy, SegmentPolicy, PooledPolicy)
}


def make_policy(name: str, settings: PolicySettings | Mapping[str, Any] | None = None) -> Policy:
    """The policy called `name` (one of `POLICY_NAMES`) with validated settings."""
    if name not in _POLICIES:
        message = f"unknown policy {name!r}; choose one of {list(POLICY_NAMES)}"
        raise ValueError(message)
    if settings is None:
        settings = PolicySettings()
    elif not isinstance(settings, PolicySettings):
        settings = PolicySettings.from_mapping(settings)
    return _POLICIES[name](settings)
