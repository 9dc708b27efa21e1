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


def estimate_heterogeneity(segments: Iterable[Counts]) -> float:
    """Empirical-Bayes estimate of how much variant effects differ by segment.

    Model: in segment s, variant i converts at baseline_s * rate_i * (1 + d_si)
    with independent d_si of variance nu^2. Segment baselines (mobile converts
    less than desktop) are NOT heterogeneity: they are fitted per segment
    (observed / expected conversions) and removed. The returned nu^2 is the
    method-of-moments estimate: excess of the squared residuals over binomial
    noise, both corrected for the fitted baseline (leverage h = share of the
    segment's expected conversions), divided by the squared expectations.
    0.0 means "no evidence that segments differ" (including too little data).
    """
    rows = list(segments)
    if len(rows) < 2:
        return 0.0
    return heterogeneity_from_arrays(
        np.stack([row.exposures for row in rows]), np.stack([row.conversions for row in rows])
    )


def heterogeneity_from_arrays(exposures: np.ndarray, conversions: np.ndarray) -> float:
    """`estimate_heterogeneity` on trusted (segments x variants) arrays, for hot loops."""
    if exposures.shape[0] < 2:
        return 0.0
    rates = (1.0 + conversions.sum(axis=0)) / (2.0 + exposures.sum(axis=0))
    expected = exposures * rates
    expected_per_segment = expected.sum(axis=1, keepdims=True)
    safe_expected = np.where(expected_per_segment > 0, expected_per_segment, 1.0)
    ratio = np.where(
        expected_per_segment > 0, conversions.sum(axis=1, keepdims=True) / safe_expected, 1.0
    )
    leverage = expected / safe_expected
    fitted_rate = np.clip(ratio * rates, 0.0, 1.0)
    fitted = exposures * fitted_rate
    residual = float(((conversions - fitted) ** 2).sum())
    noise = float((fitted * (1.0 - fitted_rate) * (1.0 - leverage)).sum())
    spread = 1.0 - 2.0 * leverage + (leverage**2).sum(axis=1, keepdims=True)
    signal_scale = float((fitted**2 * spread).sum())
    if signal_scale <= 0.0:
        return 0.0
    return max(0.0, (residual - noise) / signal_scale)
