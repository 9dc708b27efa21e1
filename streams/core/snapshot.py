"""One consistent view of an experiment's learning state: every segment, every variant.

The experiment's owner reads it from the state of record in one query (one Postgres
snapshot) and hands it to pure functions: the learner (`streams/pipeline/learn.py`: snapshot →
allocation documents) and the analytics (`streams/analytics/`: snapshot → reports). Nothing
here does I/O.

Two kinds of numbers per (segment, variant):

* raw, never discounted: `exposures`, `conversions`, `conversion_value`, and the
  inverse-propensity sums over exposures of record (each exposure i was chosen with the
  logged propensity p_i, y_i = 1 when it converted): `ipw_weight` = Σ 1/p_i,
  `ipw_weight_sq` = Σ 1/p_i², `ipw_conversions` = Σ y_i/p_i, `ipw_conversions_sq` =
  Σ y_i/p_i². These feed the analytics (consistent rates under adaptive allocation, SRM).
* `effective_exposures` / `effective_conversions`: the same counts discounted in time by the
  experiment's `discount` (equal to the raw counts when discount = 1), decayed to `taken_at`.
  These feed the learner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class VariantStats:
    exposures: int = 0
    conversions: int = 0
    conversion_value: float = 0.0
    repeat_conversions: int = 0
    ipw_weight: float = 0.0
    ipw_weight_sq: float = 0.0
    ipw_conversions: float = 0.0
    ipw_conversions_sq: float = 0.0
    effective_exposures: float = 0.0
    effective_conversions: float = 0.0


@dataclass(frozen=True)
class SegmentSnapshot:
    segment_key: str
    variants: Mapping[str, VariantStats]
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    def stats(self, variant_id: str) -> VariantStats:
        return self.variants.get(variant_id, _EMPTY)

    @property
    def exposures(self) -> int:
        return sum(v.exposures for v in self.variants.values())


@dataclass(frozen=True)
class ExperimentSnapshot:
    """Every segment of one experiment at `taken_at` (segment `*` never appears here)."""

    experiment_id: str
    variant_ids: tuple[str, ...]
    taken_at: datetime
    segments: Mapping[str, SegmentSnapshot] = field(default_factory=dict)
    unattributed_conversions: int = 0
    expired_exposures: int = 0

    def totals(self, variant_id: str) -> VariantStats:
        """Raw sums over the segments (the effective counts summed too)."""
        rows = [s.stats(variant_id) for s in self.segments.values()]
        return VariantStats(
            exposures=sum(r.exposures for r in rows),
            conversions=sum(r.conversions for r in rows),
            conversion_value=sum(r.conversion_value for r in rows),
            repeat_conversions=sum(r.repeat_conversions for r in rows),
            ipw_weight=sum(r.ipw_weight for r in rows),
            ipw_weight_sq=sum(r.ipw_weight_sq for r in rows),
            ipw_conversions=sum(r.ipw_conversions for r in rows),
            ipw_conversions_sq=sum(r.ipw_conversions_sq for r in rows),
            effective_exposures=sum(r.effective_exposures for r in rows),
            effective_conversions=sum(r.effective_conversions for r in rows),
        )


_EMPTY = VariantStats()
