"""The learn stage, pure: deltas → the owner's counts, and a snapshot → allocation documents.

Two owners, two pure functions:

* the owner of `experiment|segment` folds the deltas it receives into that segment's rows
  (`fold`): raw counts add up, effective counts are decayed in time by the experiment's
  `discount` (`core.posterior.decay_factor`) before the new evidence is added;
* the owner of an experiment turns one snapshot of every segment into the allocation of
  every segment and of `*` (`allocations`), all under one version. The pooling estimate
  comes from the same snapshot, and `*` is the traffic-weighted mixture of the segments'
  allocations — what a visitor drawn from the traffic would get — not the adaptively biased
  totals; a `uniform` experiment is uniform everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np

from streams.contracts import format_timestamp
from streams.core.policies import Policy, make_policy
from streams.core.posterior import Counts, decay_factor, estimate_pooling
from streams.core.snapshot import ExperimentSnapshot, SegmentSnapshot, VariantStats
from streams.experiments import Experiment
from streams.pipeline.replica import GLOBAL_SEGMENT

HEARTBEAT_S = 60.0
"""Unchanged weights are published again this often, so a reader can tell quiet from stale."""

RowKey = tuple[str, str, str]  # experiment_id, segment_key, variant_id


@dataclass(frozen=True)
class OwnedRow:
    """One row of variant_segment_state, as its owner folds deltas into it."""

    stats: VariantStats
    decayed_at: datetime
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class Delta:
    """What one track batch adds to one segment (a record of `segment-deltas`)."""

    delta_id: int
    experiment_id: str
    segment_key: str
    variants: Mapping[str, Mapping[str, float]]

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Delta:
        return cls(
            int(doc["delta_id"]),
            str(doc["experiment_id"]),
            str(doc["segment_key"]),
            {str(v): {k: float(x) for k, x in row.items()} for v, row in doc["variants"].items()},
        )


def fold(
    rows: Mapping[RowKey, OwnedRow],
    deltas: Sequence[Delta],
    discounts: Mapping[str, float],
    now: datetime,
) -> dict[RowKey, OwnedRow]:
    """The rows after the deltas (only the rows they touch). `discounts`: per experiment."""
    out: dict[RowKey, OwnedRow] = {}
    for delta in deltas:
        discount = discounts.get(delta.experiment_id, 1.0)
        for variant, add in delta.variants.items():
            key = (delta.experiment_id, delta.segment_key, variant)
            row = out.get(key) or rows.get(key) or OwnedRow(VariantStats(), now, now, now)
            factor = decay_factor(discount, (now - row.decayed_at).total_seconds())
            s = row.stats
            exposures = add.get("exposures", 0.0)
            conversions = add.get("conversions", 0.0)
            stats = VariantStats(
                exposures=s.exposures + round(exposures),
                conversions=s.conversions + round(conversions),
                conversion_value=s.conversion_value + add.get("conversion_value", 0.0),
                repeat_conversions=s.repeat_conversions + round(add.get("repeat_conversions", 0)),
                ipw_weight=s.ipw_weight + add.get("ipw_weight", 0.0),
                ipw_weight_sq=s.ipw_weight_sq + add.get("ipw_weight_sq", 0.0),
                ipw_conversions=s.ipw_conversions + add.get("ipw_conversions", 0.0),
                ipw_conversions_sq=s.ipw_conversions_sq + add.get("ipw_conversions_sq", 0.0),
                effective_exposures=s.effective_exposures * factor + exposures,
                effective_conversions=s.effective_conversions * factor + conversions,
            )
            out[key] = OwnedRow(stats, max(now, row.decayed_at), row.first_seen, now)
    return out


def as_of(row: OwnedRow, at: datetime, discount: float) -> VariantStats:
    """A row's stats at `at`: its effective counts decayed from its own `decayed_at`."""
    factor = decay_factor(discount, (at - row.decayed_at).total_seconds())
    if factor == 1.0:
        return row.stats
    return replace(
        row.stats,
        effective_exposures=row.stats.effective_exposures * factor,
        effective_conversions=row.stats.effective_conversions * factor,
    )


# ------------------------------------------------------------------ allocations


def policy_for(experiment: Experiment) -> Policy:
    """The experiment's policy with its settings (cached per definition)."""
    return _policy(experiment.policy_name, tuple(sorted(_settings(experiment).items())))


def _settings(experiment: Experiment) -> dict[str, Any]:
    settings = {k: v for k, v in experiment.policy.items() if k != "name"}
    settings.setdefault("holdout_share", experiment.holdout_share)
    return settings


@lru_cache(maxsize=256)
def _policy(name: str, settings: tuple[tuple[str, Any], ...]) -> Policy:
    return make_policy(name, dict(settings))


def discount_of(experiment: Experiment) -> float:
    return float(policy_for(experiment).settings.discount)


def _counts(experiment: Experiment, segment: SegmentSnapshot | None) -> Counts:
    rows = [segment.stats(v) if segment else VariantStats() for v in experiment.variant_ids]
    exposures = [r.effective_exposures for r in rows]
    return Counts.from_lists(
        exposures, [min(r.effective_conversions, e) for r, e in zip(rows, exposures, strict=True)]
    )


def allocations(
    experiment: Experiment, snapshot: ExperimentSnapshot, version: int
) -> dict[str, dict[str, Any]]:
    """Allocation documents of every segment of the snapshot and of `*`, one version."""
    policy = policy_for(experiment)
    segments = {key: _counts(experiment, seg) for key, seg in sorted(snapshot.segments.items())}
    totals = Counts.zeros(len(experiment.variant_ids))
    for counts in segments.values():
        totals = totals + counts
    pooling = estimate_pooling(segments.values()) if policy.uses_pooling and segments else None
    docs: dict[str, dict[str, Any]] = {}
    mixture = np.zeros(len(experiment.variant_ids))
    traffic = 0.0
    for key, counts in segments.items():
        allocation = policy.weights(counts, totals, pooling)
        seg = snapshot.segments[key]
        docs[key] = _document(
            experiment,
            key,
            allocation.probabilities,
            allocation.source,
            version,
            snapshot.taken_at,
            seg,
        )
        share = float(seg.exposures)
        mixture += share * allocation.probabilities
        traffic += share
    if traffic > 0 and policy.name != "uniform":
        star, source = mixture / traffic, "global"
    else:
        star = np.full(len(experiment.variant_ids), 1.0 / len(experiment.variant_ids))
        source = "uniform"
    docs[GLOBAL_SEGMENT] = _document(
        experiment, GLOBAL_SEGMENT, star, source, version, snapshot.taken_at, None, snapshot
    )
    return docs


def _document(
    experiment: Experiment,
    segment_key: str,
    probabilities: np.ndarray,
    source: str,
    version: int,
    at: datetime,
    segment: SegmentSnapshot | None,
    snapshot: ExperimentSnapshot | None = None,
) -> dict[str, Any]:
    def stats(v: str) -> VariantStats:
        if segment is not None:
            return segment.stats(v)
        assert snapshot is not None
        return snapshot.totals(v)

    return {
        "experiment_id": experiment.experiment_id,
        "segment_key": segment_key,
        "weights": {
            v: float(p) for v, p in zip(experiment.variant_ids, probabilities, strict=True)
        },
        "source": source,
        "version": version,
        "exposures": {v: stats(v).exposures for v in experiment.variant_ids},
        "conversions": {v: stats(v).conversions for v in experiment.variant_ids},
        "updated_at": format_timestamp(at),
    }


def to_publish(
    docs: Mapping[str, Mapping[str, Any]],
    published: Mapping[str, Mapping[str, float]],
    threshold: float,
    heartbeat: bool,
) -> list[str]:
    """The segments whose weights are new or moved by > threshold (all on a heartbeat)."""
    if heartbeat:
        return sorted(docs)
    return sorted(k for k, d in docs.items() if moved(published.get(k), d["weights"], threshold))


def moved(
    previous: Mapping[str, float] | None, current: Mapping[str, float], threshold: float
) -> bool:
    """True when the weights are new or some variant's probability moved by > threshold."""
    if previous is None or set(previous) != set(current):
        return True
    return any(abs(current[v] - previous[v]) > threshold for v in current)
