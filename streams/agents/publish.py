"""The experiment owner: one snapshot of every segment → allocations and insights.

An experiment is owned by the worker that holds its partition of `experiment-changes` (the
topic the segment owners notify, keyed by experiment_id). On every tick the owner publishes
the experiments that changed, and every experiment at least every `HEARTBEAT_S`, from one
snapshot under a version that strictly increases per experiment (`StateStore.snapshot`);
every `BANDIT_INSIGHTS_INTERVAL_S` it publishes lift reports, anomalies and recommendations
(`streams.analytics.report.build_insights`) to `insights` and `insights_history`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import murmur2

from streams import metrics
from streams.analytics.report import build_insights
from streams.core.snapshot import ExperimentSnapshot
from streams.experiments import Experiment
from streams.pipeline.events import RawEvent
from streams.pipeline.learn import HEARTBEAT_S, allocations, discount_of, to_publish
from streams.pipeline.replica import allocation_key
from streams.runtime import Runtime
from streams.topics import ALLOCATIONS, INSIGHTS

log = logging.getLogger("bandit_stream.publish")
HISTORY_S = 3600.0  # insights compare the last snapshot with those of the past hour


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` (murmur2, like aiokafka's)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class Publisher:
    """What one worker knows of the experiments it owns: what changed, what it published."""

    def __init__(self, rt: Runtime, owned_partitions: Callable[[], set[int]]) -> None:
        self.rt = rt
        self.owned_partitions = owned_partitions
        self.dirty: set[str] = set()
        self.published: dict[str, dict[str, dict[str, float]]] = {}
        self.last_publish: dict[str, float] = {}
        self.history: dict[str, list[ExperimentSnapshot]] = {}
        self.last_insights: dict[str, float] = {}

    def changed(self, batch: Sequence[RawEvent]) -> None:
        for event in batch:
            if event.key:
                self.dirty.add(event.key.decode("utf-8", "replace"))

    def owned(self) -> list[Experiment]:
        mine = self.owned_partitions()
        n = self.rt.settings.partitions
        return [
            e for e in self.rt.registry.experiments() if partition_of(e.experiment_id, n) in mine
        ]

    async def tick(self) -> None:
        """Publish what is due among the experiments this worker owns (never raises)."""
        now = time.monotonic()
        for experiment in self.owned():
            eid = experiment.experiment_id
            heartbeat = now - self.last_publish.get(eid, -1e9) >= HEARTBEAT_S
            if experiment.status != "running" or not (heartbeat or eid in self.dirty):
                continue
            self.dirty.discard(eid)
            try:
                await self.publish(experiment, heartbeat)
            except Exception as exc:
                self.dirty.add(eid)
                metrics.STAGE_ERRORS.labels(stage="publish").inc()
                self.rt.log_failure(f"publishing the weights of {eid!r}", exc)
        stale = set(self.last_publish) - {e.experiment_id for e in self.owned()}
        for eid in stale:  # no longer ours: the next owner starts afresh
            self.last_publish.pop(eid, None)
            self.published.pop(eid, None)

    async def report(self) -> None:
        """Insights of the owned experiments that are due, from one snapshot each (never
        raises: a failing report is logged and counted)."""
        now = time.monotonic()
        for experiment in self.owned():
            eid = experiment.experiment_id
            if now - self.last_insights.get(eid, -1e9) < self.rt.settings.insights_interval_s:
                continue
            self.last_insights[eid] = now
            try:
                await self.publish_insights(experiment)
            except Exception as exc:
                metrics.STAGE_ERRORS.labels(stage="insights").inc()
                self.rt.log_failure(f"the insights of {eid!r}", exc)

    async def publish_insights(self, experiment: Experiment) -> list[dict[str, Any]]:
        eid = experiment.experiment_id
        store = await self.rt.store()
        snap = await store.current_snapshot(eid, experiment.variant_ids)
        history = [
            h
            for h in self.history.get(eid, [])
            if (snap.snapshot.taken_at - h.taken_at).total_seconds() <= HISTORY_S
        ]
        documents = build_insights(
            eid,
            experiment.variant_ids,
            snap.snapshot,
            history,
            now=datetime.now(UTC),
            snapshot_version=snap.version,
            variant_names={
                v: n
                for v, n in zip(experiment.variant_ids, experiment.variant_names, strict=True)
                if n
            },
        )
        await self.rt.send(INSIGHTS, ((eid.encode(), d) for d in documents))
        await store.record_insights(documents)
        self.history[eid] = [*history, snap.snapshot]
        metrics.INSIGHTS_PUBLISHED.inc(len(documents))
        return documents

    async def publish(self, experiment: Experiment, heartbeat: bool) -> int:
        eid = experiment.experiment_id
        store = await self.rt.store()
        async with store.snapshot(eid, experiment.variant_ids, discount_of(experiment)) as snap:
            docs = allocations(experiment, snap.snapshot, snap.version)
            published = self.published.setdefault(eid, {})
            keys = to_publish(docs, published, self.rt.settings.weights_min_change, heartbeat)
            await self.rt.send(
                ALLOCATIONS, ((allocation_key(eid, k).encode(), docs[k]) for k in keys)
            )
        for k in keys:
            published[k] = docs[k]["weights"]
        self.last_publish[eid] = time.monotonic()
        metrics.WEIGHTS_PUBLISHED.inc(len(keys))
        return len(keys)
