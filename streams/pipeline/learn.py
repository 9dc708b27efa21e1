"""The learn stage, pure: counts of a segment (and of its experiment) → allocation documents.

A segment's weights are recomputed from the state of record after its counts change, and
published only when some probability moved by more than a threshold, so the compacted
`allocations` topic carries news, not noise. The version of an allocation is the number of
observations behind it (exposures + conversions), which only grows: replicas keep the newest.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from streams.contracts import format_timestamp
from streams.core.policies import Policy, make_policy
from streams.core.posterior import Counts, PoolingEstimate, estimate_pooling
from streams.experiments import Experiment
from streams.pipeline.weights import GLOBAL_SEGMENT

VariantCounts = Mapping[str, tuple[int, int]]  # variant_id -> (exposures, conversions)


def policy_for(experiment: Experiment) -> Policy:
    """The experiment's policy with its settings (cached per definition version)."""
    return _policy(experiment.policy_name, tuple(sorted(_settings(experiment).items())))


def _settings(experiment: Experiment) -> dict[str, Any]:
    settings = {k: v for k, v in experiment.policy.items() if k != "name"}
    settings.setdefault("holdout_share", experiment.holdout_share)
    return settings


@lru_cache(maxsize=256)
def _policy(name: str, settings: tuple[tuple[str, Any], ...]) -> Policy:
    return make_policy(name, dict(settings))


def as_counts(experiment: Experiment, counts: VariantCounts) -> Counts:
    return Counts.from_lists(
        [counts.get(v, (0, 0))[0] for v in experiment.variant_ids],
        [counts.get(v, (0, 0))[1] for v in experiment.variant_ids],
    )


def pooling_estimate(
    experiment: Experiment, segments: Mapping[str, VariantCounts]
) -> PoolingEstimate | None:
    """How much the experiment's segments differ, for policies that pool (else None)."""
    if not policy_for(experiment).uses_pooling or not segments:
        return None
    return estimate_pooling(as_counts(experiment, counts) for counts in segments.values())


def allocation_document(
    experiment: Experiment,
    segment_key: str,
    segment: VariantCounts,
    totals: VariantCounts,
    now: datetime,
    pooling: PoolingEstimate | None = None,
) -> dict[str, Any]:
    """The `allocations` document of one segment (or of the experiment, segment `*`).

    `pooling` is the estimate over all the experiment's segments (`pooling_estimate`);
    without it a pooling policy shrinks with its fixed `pooling_strength`.
    """
    global_counts = as_counts(experiment, totals)
    if segment_key == GLOBAL_SEGMENT:
        settings = _settings(experiment)
        policy = _policy("global", tuple(sorted(settings.items())))
        own = totals
        allocation = policy.weights(global_counts, global_counts)
    else:
        own = segment
        allocation = policy_for(experiment).weights(
            as_counts(experiment, segment), global_counts, pooling
        )
    exposures = {v: int(own.get(v, (0, 0))[0]) for v in experiment.variant_ids}
    conversions = {v: int(own.get(v, (0, 0))[1]) for v in experiment.variant_ids}
    return {
        "experiment_id": experiment.experiment_id,
        "segment_key": segment_key,
        "weights": {
            v: float(p)
            for v, p in zip(experiment.variant_ids, allocation.probabilities, strict=True)
        },
        "source": allocation.source,
        "version": max(1, sum(exposures.values()) + sum(conversions.values())),
        "exposures": exposures,
        "conversions": conversions,
        "updated_at": format_timestamp(now),
    }


def moved(
    previous: Mapping[str, float] | None, current: Mapping[str, float], threshold: float
) -> bool:
    """True when the weights are new or some variant's probability moved by > threshold."""
    if previous is None or set(previous) != set(current):
        return True
    return any(abs(current[v] - previous[v]) > threshold for v in current)
