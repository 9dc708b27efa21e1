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
        return f"Counts(exposures={self.exposures.tolist()}, conversions={self.conversions.tolist()})"

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


HETEROGENEITY_GRID = np.logspace(-4.0, 0.0, 17)
"""Candidate nu^2 (variance of relative variant effects across segments):
nu from 1 % to 100 %, a flat prior on log nu^2."""

BASELINE_PSEUDO_CONVERSIONS = 10.0
"""A segment's baseline (observed / expected conversions) is shrunk to 1 as if
10 conversions had been observed exactly at the expected rates, so a segment
with a handful of visits gets no extreme baseline."""

_FIT_ITERATIONS = 12
_RATE_CLIP = 1e-6


@dataclass(frozen=True, eq=False)
class PoolingEstimate:
    """What all segments together say about each variant, for the pooled policy.

    `variant_rates`: each variant's rate with segment baselines factored out
    (for a segment of average baseline), so a variant shown mostly to
    low-converting segments is not mistaken for a bad variant (Simpson).
    `heterogeneity`: nu^2, the variance of a variant's relative effect from
    segment to segment beyond what the baselines explain.
    """

    variant_rates: np.ndarray
    heterogeneity: float


def segment_baseline(counts: Counts, variant_rates: np.ndarray) -> float:
    """Observed / expected conversions of a segment, shrunk toward 1."""
    expected = float(counts.exposures @ variant_rates)
    observed = float(counts.conversions.sum())
    return (observed + BASELINE_PSEUDO_CONVERSIONS) / (expected + BASELINE_PSEUDO_CONVERSIONS)


def estimate_pooling(segments: Iterable[Counts]) -> PoolingEstimate:
    """Empirical-Bayes summary of all segments of one experiment.

    Fits rate(segment s, variant i) = baseline_s * rate_i by alternating
    updates (iterative proportional fitting, Beta(1, 1) pseudo-counts per
    variant, baselines shrunk as in `segment_baseline` and normalised to a
    traffic-weighted mean of 1). Then nu^2 is the posterior median over
    `HETEROGENEITY_GRID` of the beta-binomial marginal likelihood in which
    each cell's rate is Beta with mean baseline_s * rate_i and relative sd nu.
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


def prior_strength(mean: np.ndarray, heterogeneity: float) -> np.ndarray:
    """m such that Beta(m mean, m (1 - mean)) has sd sqrt(heterogeneity) * mean."""
    with np.errstate(divide="ignore"):
        return np.asarray((1.0 - mean) / (heterogeneity * mean) - 1.0)


def pooling_from_arrays(exposures: np.ndarray, conversions: np.ndarray) -> PoolingEstimate:
    """`estimate_pooling` on trusted (segments x variants) arrays, for hot loops."""
    traffic = exposures.sum(axis=1)
    total = float(traffic.sum())
    traffic_share = traffic / total if total > 0 else np.full(traffic.size, 1.0 / traffic.size)
    observed = conversions.sum(axis=1)
    baseline = np.ones(traffic.size)
    rates = (1.0 + conversions.sum(axis=0)) / (2.0 + exposures.sum(axis=0))
    for _ in range(_FIT_ITERATIONS):
        expected = exposures @ rates
        baseline = (observed + BASELINE_PSEUDO_CONVERSIONS) / (
            expected + BASELINE_PSEUDO_CONVERSIONS
        )
        baseline /= float(traffic_share @ baseline)
        rates = (1.0 + conversions.sum(axis=0)) / (2.0 + baseline @ exposures)
    seen = exposures > 0
    if not seen.any():
        return PoolingEstimate(rates, float(np.median(HETEROGENEITY_GRID)))
    mean = np.clip(np.outer(baseline, rates)[seen], _RATE_CLIP, 1.0 - _RATE_CLIP)
    n = exposures[seen]
    c = conversions[seen]
    strength = np.maximum(prior_strength(mean, HETEROGENEITY_GRID[:, None]), 1e-3)
    a = strength * mean
    b = strength * (1.0 - mean)
    log_likelihood = (special.betaln(c + a, n - c + b) - special.betaln(a, b)).sum(axis=1)
    posterior = np.exp(log_likelihood - log_likelihood.max())
    mean_heterogeneity = float(posterior @ HETEROGENEITY_GRID / posterior.sum())
    return PoolingEstimate(rates, mean_heterogeneity)
