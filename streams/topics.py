"""Every Kafka topic of the service: name, partitions, key, contract, retention.

The one place topic names are spelled. Visits, exposures, conversions and decisions share a
key (visitor_id) and a partition count, so that a visitor's events and assignment live on the
same partition (faust writes a table to the partition of the event being processed).
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings

VISITS = "visits"
EXPOSURES = "exposures"
CONVERSIONS = "conversions"
EXPERIMENTS = "experiments"
DECISIONS = "decisions"
ALLOCATIONS = "allocations"
INSIGHTS = "insights"
DEADLETTER = "deadletter"
SEGMENT_DELTAS = "segment-deltas"
EXPERIMENT_CHANGES = "experiment-changes"
SELFCHECK = "selfcheck"


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the service creates it."""

    base: str
    name: str
    partitions: int
    key: str
    contract: str | None
    compacted: bool = False
    internal: bool = False

    @property
    def config(self) -> dict[str, str]:
        if self.compacted:
            return {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"}
        return {}


_LAYOUT: tuple[tuple[str, str, str | None, bool, bool, bool], ...] = (
    # base, key, contract, compacted, internal, single_partition
    (VISITS, "visitor_id", VISITS, False, False, False),
    (EXPOSURES, "visitor_id", EXPOSURES, False, False, False),
    (CONVERSIONS, "visitor_id", CONVERSIONS, False, False, False),
    (EXPERIMENTS, "experiment_id", EXPERIMENTS, True, False, True),
    (DECISIONS, "visitor_id", DECISIONS, False, False, False),
    (ALLOCATIONS, "experiment_id|segment_key", ALLOCATIONS, True, False, False),
    (INSIGHTS, "experiment_id", "insights", False, False, False),
    (DEADLETTER, "the original key", DEADLETTER, False, False, False),
    (SEGMENT_DELTAS, "experiment_id|segment_key", None, False, True, False),
    (EXPERIMENT_CHANGES, "experiment_id", None, False, True, False),
    (SELFCHECK, "check run id", None, False, True, True),
)


def topic_specs(settings: Settings) -> dict[str, TopicSpec]:
    """All topics by base name, with the prefix and partition count of `settings`."""
    return {
        base: TopicSpec(
            base=base,
            name=f"{settings.topic_prefix}{base}",
            partitions=1 if single else settings.partitions,
            key=key,
            contract=contract,
            compacted=compacted,
            internal=internal,
        )
        for base, key, contract, compacted, internal, single in _LAYOUT
    }


def topic_name(settings: Settings, base: str) -> str:
    """The full name of one topic (raises KeyError for an unknown base name)."""
    return topic_specs(settings)[base].name
