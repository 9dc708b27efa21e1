"""Beta-Bernoulli posteriors per (experiment, segment, variant).

`Counts` is the only state the bandit needs: per-variant exposures and
conversions. They are floats so that discounting (forgetting old traffic)
stays exact arithmetic on the same type. Inputs are validated once, where they
enter (`Counts` construction); everything downstream trusts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

DEFAULT_PRIOR_ALPHA = 1.0
DEFAULT_PRIOR_BETA = 1.0


def _as_vector(values: Any, name: str) -> np.ndarray:
    try:
        array = np.array(values, dtype=float)
    except (TypeError, ValueError) as exc:
        message = f"{name} must be a sequence of numbers, got {values!r}"
        raise ValueError(message) from exc
    if array.ndim != 1 or array.size == 0:
        message = f"{name} must be a non-empty 1-D sequence, got shape {array.shape}"
        raise ValueError(message)
    return array


def _validate(exposures: np.ndarray, conversions: np.ndarray) -> None:
    if exposures.shape != conversions.shape:
        message = (
            f"exposures and conversions must have the same length, "
            f"got {exposures.size} and {conversions.size}"
        )
        raise ValueError(message)
    if not (np.all(np.isfinite(exposures)) and np.all(np.isfinite(conversions))):
        message = "exposures and conversions must be finite numbers"
        raise ValueError(message)
    if np.any(exposures < 0) or np.any(conversions < 0):
        message = (
            f"exposures and conversions must be non-negative, "
            f"got exposures={exposures.tolist()} conversions={conversions.tolist()}"
        )
        raise ValueError(message)
    over = np.flatnonzero(conversions > exposures)
    if over.size:
        i = int(over[0])
        message = (
            f"variant {i} has more conversions ({conversions[i]:g}) "
            f"than exposures ({exposures[i]:g})"
        )
        raise ValueError(message)


@dataclass(frozen=True, eq=False)
class Counts:
    """Per-variant exposures and conversions (read-only float arrays)."""

    exposures: np.ndarray
    conversions: np.ndarray

    def __post_init__(self) -> None:
        exposures = _as_vector(self.exposures, "exposures")
        conversions = _as_vector(self.conversions, "conversions")
        _validate(exposures, conversions)
        exposures.flags.writeable = False
        conversions.flags.writeable = False
        object.__setattr__(self, "exposures", exposures)
        object.__setattr__(self, "conversions", conversions)

    @classmethod
    def zeros(cls, variants: int) -> Counts:
        """No traffic yet for `variants` variants."""
        return cls(np.zeros(variants), np.zeros(variants))

    @classmethod
    def from_lists(cls, exposures: Sequence[float], conversions: Sequence[float]) -> Counts:
        return cls(np.asarray(exposures, dtype=float), np.asarray(conversions, dtype=float))

    @classmethod
    def from_dict(
        cls,
        per_variant: Mapping[str, tuple[float, float] | Mapping[str, float]],
        variants: Sequence[str] | None = None,
    ) -> Counts:
        """Build from `{variant: (exposures, conversions)}` or
        `{variant: {"exposures": n, "conversions": c}}`, in `variants` order
        (default: the mapping's order). Missing variants count as no traffic."""
        order = list(per_variant) if variants is None else list(variants)
        unknown = set(per_variant) - set(order)
        if unknown:
            message = f"counts given for unknown variants: {sorted(unknown)}"
            raise ValueError(message)
        exposures: list[float] = []
        conversions: list[float] = []
        for variant in order:
            entry = per_variant.get(variant, (0.0, 0.0))
            if isinstance(entry, Mapping):
                exposures.append(float(entry.get("exposures", 0.0)))
                conversions.append(float(entry.get("conversions", 0.0)))
            else:
                exposure, conversion = entry
                exposures.append(float(exposure))
                conversions.append(float(conversion))
        return cls.from_lists(exposures, conversions)

    @property
    def variants(self) -> int:
        return int(self.exposures.size)

    @property
    def total_exposures(self) -> float:
        return float(self.exposures.sum())

    def __add__(self, other: object) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        if other.variants != self.variants:
            message = f"cannot merge counts of {self.variants} and {other.variants} variants"
            raise ValueError(message)
        return Counts(self.exposures + other.exposures, self.conversions + other.conversions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Counts):
            return NotImplemented
        return bool(
            np.array_equal(self.exposures, other.exposures)
            and np.array_equal(self.conversions, other.conversions)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Counts(exposures={self.exposures.tolist()}, conversions={self.conversions.tolist()})"
        )

    def discounted(self, gamma: float) -> Counts:
        """Old evidence weighted by `gamma` in (0, 1]: forgets drifting traffic."""
        _check_gamma(gamma)
        return Counts(self.exposures * gamma, self.conversions * gamma)


def _check_gamma(gamma: float) -> None:
    if not 0.0 < gamma <= 1.0:
        message = f"discount gamma must be in (0, 1], got {gamma!r}"
        raise ValueError(message)


def update(counts: Counts, variant: int, converted: bool, gamma: float = 1.0) -> Counts:
    """One more exposure of `variant` (and a conversion if `converted`).

    Old counts are first multiplied by `gamma`, so with gamma < 1 an
    observation from n events ago weighs gamma**n.
    """
    _check_gamma(gamma)
    if not 0 <= variant < counts.variants:
        message = f"variant index {variant} out of range for {counts.variants} variants"
        raise ValueError(message)
    exposures = counts.exposures * gamma
    conversions = counts.conversions * gamma
    exposures[variant] += 1.0
    if converted:
        conversions[variant] += 1.0
    return Counts(exposures, conversions)


def posterior_parameters(
    counts: Counts,
    prior_alpha: float | np.ndarray = DEFAULT_PRIOR_ALPHA,
    prior_beta: float | np.ndarray = DEFAULT_PRIOR_BETA,
) -> tuple[np.ndarray, np.ndarray]:
    """Beta posterior (alpha, beta) per variant: prior + successes / failures."""
    alpha = prior_alpha + counts.conversions
    beta = prior_beta + (counts.exposures - counts.conversions)
    return alpha, beta


def posterior_mean(counts: Counts) -> np.ndarray:
    """Posterior mean conversion rate per variant under the default Beta(1, 1) prior."""
    alpha, beta = posterior_parameters(counts)
    return np.asarray(alpha / (alpha + beta))


HETEROGENEITY_GRID = np.logspace(-4.0, 0.0, 25)
"""Candidate nu^2 (variance of relative variant effects across segments):
nu from 1 % to 100 %, nu^2 in steps of 10^(1/6) ~ 1.47."""

HETEROGENEITY_PRIOR_SCALE = 0.5
"""Half-Cauchy prior on nu with scale 0.2 (Gelman 2006's weakly informative
choice for a hierarchical sd): effects that differ by ~20 % between segments
are as plausible a priori as lifts of that size themselves; much larger
differences are possible but need evidence, and nu -> 0 is not favoured."""

BASELINE_PSEUDO_CONVERSIONS = 10.0
"""A segment's baseline (observed / expected conversions) is shrunk to 1 as if
10 conversions had been observed exactly at the expected rates, so a segment
with a handful of visits gets no extreme baseline."""

_FIT_ITERATIONS = 12
_REFIT_ROUNDS = 2
_SD_GRID = np.sqrt(HETEROGENEITY_GRID)
# Half-Cauchy density of nu, times nu because the grid is uniform in log nu.
_LOG_HETEROGENEITY_PRIOR = np.log(_SD_GRID) - np.log1p((_SD_GRID / HETEROGENEITY_PRIOR_SCALE) ** 2)
_RATE_CLIP = 1e-6


@dataclass(frozen=True, eq=False)
class PoolingEstimate:
    """What all segments together say about each variant, for the pooled policy.

    `variant_rates`: each variant's rate with segment baselines factored out
    (for a segment of average baseline), so a variant shown mostly to
    low-converting segments is not mistaken for a bad variant (Simpson).
    `heterogeneity`: posterior mean of nu^2, the variance of a variant's
    relative effect from segment to segment beyond what the baselines explain.
    A single Beta prior with this variance matches the first two moments of
    the prior averaged over the posterior of nu^2.
    `rate_variances`: relative variance of each `variant_rates` entry (1 /
    the effective number of conversions behind it), to widen the prior when
    the global rate itself is still uncertain.
    """

    variant_rates: np.ndarray
    heterogeneity: float
    rate_variances: np.ndarray


def segment_baseline(
    counts: Counts, variant_rates: np.ndarray, heterogeneity: float = 0.0
) -> float:
    """Observed / expected conversions of a segment, shrunk toward 1.

    With heterogeneity nu^2 > 0 each variant's own ratio is only a noisy
    measure of the baseline (its effect may differ in this segment), so the
    variants are combined with random-effects weights 1 / (1 / E + nu^2)
    instead of by expected conversions E: the variant the bandit shows most
    no longer dictates the baseline, and thus the prior, of all the others.
    """
    expected = counts.exposures * variant_rates
    observed = counts.conversions
    weight = np.ones_like(expected)
    for _ in range(2 if heterogeneity > 0 else 1):
        baseline = (float(weight @ observed) + BASELINE_PSEUDO_CONVERSIONS) / (
            float(weight @ expected) + BASELINE_PSEUDO_CONVERSIONS
        )
        weight = 1.0 / (1.0 + heterogeneity * expected * baseline)
    return baseline


def estimate_pooling(segments: Iterable[Counts]) -> PoolingEstimate:
    """Empirical-Bayes summary of all segments of one experiment.

    Fits rate(segment s, variant i) = baseline_s * rate_i by alternating
    updates (iterative proportional fitting, Beta(1, 1) pseudo-counts per
    variant, baselines shrunk as in `segment_baseline` and normalised to a
    traffic-weighted mean of 1). The posterior over nu^2 on
    `HETEROGENEITY_GRID` comes from the beta-binomial marginal likelihood in
    which each cell's rate is Beta with mean baseline_s * rate_i and relative
    sd nu.
    A likelihood (unlike moment estimators) stays valid when the data were
    collected adaptively by the bandit itself.
    """
    rows = list(segments)
    if not rows:
        message = "need at least one segment to estimate pooling"
        raise ValueError(message)
    return pooling_from_arrays(
        np.stack([row.exposures for row in rows]), np.stack([row.conversions for row in rows])
    )


def prior_strength(mean: np.ndarray, relative_variance: float | np.ndarray) -> np.ndarray:
    """m such that Beta(m mean, m (1 - mean)) has variance relative_variance * mean^2."""
    with np.errstate(divide="ignore"):
        return np.asarray((1.0 - mean) / (relative_variance * mean) - 1.0)


def pooling_from_arrays(exposures: np.ndarray, conversions: np.ndarray) -> PoolingEstimate:
    """`estimate_pooling` on trusted (segments x variants) arrays, for hot loops."""
    heterogeneity = _prior_mean_heterogeneity()
    cell_weight = np.ones_like(exposures)
    baseline, rates = _fit_baselines_and_rates(exposures, conversions, cell_weight)
    for _ in range(_REFIT_ROUNDS):
        heterogeneity = _posterior_mean_heterogeneity(exposures, conversions, baseline, rates)
        # Random-effects weights: a segment where a variant was shown a lot
        # still says only so much about that variant elsewhere (at most about
        # 1 / nu^2 conversions' worth), so the adaptive allocation of the
        # bandit does not bias the rates toward the segments it favoured.
        cell_weight = 1.0 / (1.0 + heterogeneity * exposures * np.outer(baseline, rates))
        baseline, rates = _fit_baselines_and_rates(exposures, conversions, cell_weight)
    effective_conversions = (cell_weight * exposures * np.outer(baseline, rates)).sum(axis=0)
    return PoolingEstimate(rates, heterogeneity, 1.0 / (1.0 + effective_conversions))


def _prior_mean_heterogeneity() -> float:
    prior = np.exp(_LOG_HETEROGENEITY_PRIOR)
    return float(prior @ HETEROGENEITY_GRID / prior.sum())


def _fit_baselines_and_rates(
    exposures: np.ndarray, conversions: np.ndarray, cell_weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """rate(s, i) = baseline_s * rate_i by weighted iterative proportional fitting."""
    traffic = exposures.sum(axis=1)
    total = float(traffic.sum())
    traffic_share = traffic / total if total > 0 else np.full(traffic.size, 1.0 / traffic.size)
    weighted_exposures = cell_weight * exposures
    weighted_conversions = cell_weight * conversions
    observed_by_segment = weighted_conversions.sum(axis=1)
    observed_by_variant = weighted_conversions.sum(axis=0)
    baseline = np.ones(traffic.size)
    rates = (1.0 + observed_by_variant) / (2.0 + weighted_exposures.sum(axis=0))
    for _ in range(_FIT_ITERATIONS):
        expected = weighted_exposures @ rates
        baseline = (observed_by_segment + BASELINE_PSEUDO_CONVERSIONS) / (
            expected + BASELINE_PSEUDO_CONVERSIONS
        )
        baseline /= float(traffic_share @ baseline)
        rates = (1.0 + observed_by_variant) / (2.0 + baseline @ weighted_exposures)
    return baseline, rates


def _posterior_mean_heterogeneity(
    exposures: np.ndarray, conversions: np.ndarray, baseline: np.ndarray, rates: np.ndarray
) -> float:
    seen = exposures > 0
    cells = int(seen.sum())
    fitted_parameters = int(seen.any(axis=1).sum() + seen.any(axis=0).sum()) - 1
    if cells == 0 or cells <= fitted_parameters:
        return _prior_mean_heterogeneity()
    # Fitted baselines and rates absorb part of the spread: with them plugged
    # in, the likelihood of nu^2 peaks at nu^2 * residual df / cells (the
    # classic ML-versus-REML bias, exact for balanced normal layouts), so the
    # likelihood of nu^2 is evaluated there.
    shrink = (cells - fitted_parameters) / cells
    mean = np.clip(np.outer(baseline, rates)[seen], _RATE_CLIP, 1.0 - _RATE_CLIP)
    n = exposures[seen]
    c = conversions[seen]
    strength = np.maximum(prior_strength(mean, shrink * HETEROGENEITY_GRID[:, None]), 1e-3)
    a = strength * mean
    b = strength * (1.0 - mean)
    log_posterior = (special.betaln(c + a, n - c + b) - special.betaln(a, b)).sum(
        axis=1
    ) + _LOG_HETEROGENEITY_PRIOR
    posterior = np.exp(log_posterior - log_posterior.max())
    return float(posterior @ HETEROGENEITY_GRID / posterior.sum())
