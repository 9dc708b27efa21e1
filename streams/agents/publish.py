"""The experiment owner: one snapshot of every segment → allocations (and insights).

An experiment is owned by the worker that holds its partition of `experiment-changes` (the
topic the segment owners notify, keyed by experiment_id). On every tick the owner publishes
the experiments that changed, and every experiment at least every `HEARTBEAT_S`, from one
snapshot under a version that strictly increases per experiment (`StateStore.snapshot`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import orjson
from aiokafka.partitioner import murmur2

from streams import metrics
from streams.experiments import Experiment
from streams.pipeline.events import RawEvent
from streams.pipeline.learn import HEARTBEAT_S, allocations, decayed_to, discount_of, to_publish
from streams.pipeline.replica import allocation_key
from streams.runtime import Runtime
from streams.topics import ALLOCATIONS

log = logging.getLogger("bandit_stream.publish")


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
            except Exception:
                self.dirty.add(eid)
                metrics.STAGE_ERRORS.labels(stage="publish").inc()
                log.exception("publishing the weights of %r failed; retried next tick", eid)
        stale = set(self.last_publish) - {e.experiment_id for e in self.owned()}
        for eid in stale:  # no longer ours: the next owner starts afresh
            self.last_publish.pop(eid, None)
            self.published.pop(eid, None)

    async def publish(self, experiment: Experiment, heartbeat: bool) -> int:
        eid = experiment.experiment_id
        store = await self.rt.store()
        async with store.snapshot(eid, experiment.variant_ids) as snap:
            snapshot = decayed_to(snap.snapshot, discount_of(experiment))
            docs = allocations(experiment, snapshot, snap.version)
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


def experiment_ids(batch: Iterable[RawEvent]) -> set[str]:
    out = set()
    for event in batch:
        try:
            out.add(str(orjson.loads(event.value or b"")["experiment_id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out
