"""segment-deltas → allocations, on the segment partition: recompute, publish what moved.

Each `experiment|segment` key lives on one partition, so one worker owns the publication of
its weights; recomputation is rate-limited per key (BANDIT_WEIGHTS_MIN_INTERVAL_S).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from streams import metrics
from streams.core.posterior import PoolingEstimate
from streams.experiments import Experiment
from streams.pipeline.events import RawEvent
from streams.pipeline.learn import allocation_document, moved, policy_for, pooling_estimate
from streams.pipeline.replica import GLOBAL_SEGMENT, allocation_key
from streams.runtime import Runtime
from streams.topics import ALLOCATIONS

SegmentRef = tuple[str, str]
POOLING_REFRESH_S = 5.0  # the estimate spans every segment: cheap enough, not per change
log = logging.getLogger("bandit_stream.learn")


class Learner:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.last_run: dict[SegmentRef, float] = {}
        self.published: dict[SegmentRef, dict[str, float]] = {}
        self.pending: set[SegmentRef] = set()
        self.pooling: dict[str, tuple[float, PoolingEstimate | None]] = {}

    async def changed(self, refs: Iterable[SegmentRef]) -> None:
        """Recompute the refs not computed within the interval; defer the others."""
        now = time.monotonic()
        interval = self.rt.settings.weights_min_interval_s
        due = set()
        for ref in set(refs) | self.pending:
            if now - self.last_run.get(ref, -1e9) >= interval:
                due.add(ref)
            else:
                self.pending.add(ref)
        self.pending -= due
        if due:
            await self.recompute(due)

    async def _pooling(self, experiment: Experiment) -> PoolingEstimate | None:
        """The experiment's pooling estimate over all its segments, refreshed every 5 s."""
        if not policy_for(experiment).uses_pooling:
            return None
        at, estimate = self.pooling.get(experiment.experiment_id, (-1e9, None))
        if time.monotonic() - at >= POOLING_REFRESH_S:
            store = await self.rt.store()
            every = await store.segment_counts(experiment.experiment_id)
            estimate = pooling_estimate(experiment, every)
            self.pooling[experiment.experiment_id] = (time.monotonic(), estimate)
        return estimate

    async def learn_batch(self, rt: Runtime, batch: Sequence[RawEvent]) -> None:
        """A batch of segment-deltas records: the refs they name changed."""
        refs = set()
        for event in batch:
            try:
                doc = orjson.loads(event.value or b"")
                refs.add((str(doc["experiment_id"]), str(doc["segment_key"])))
            except (ValueError, KeyError, TypeError):
                log.error("malformed segment delta ignored at offset %s", event.offset)
        await self.changed(refs)

    async def flush_pending(self) -> None:
        await self.changed(())

    async def recompute(self, refs: set[SegmentRef]) -> None:
        by_experiment: dict[str, list[str]] = defaultdict(list)
        for experiment_id, segment_key in refs:
            by_experiment[experiment_id].append(segment_key)
        store = await self.rt.store()
        docs: list[dict[str, Any]] = []
        now = datetime.now(UTC)
        for experiment_id, segments in by_experiment.items():
            experiment = self.rt.registry.get(experiment_id)
            if experiment is None:
                continue
            own = [s for s in segments if s != GLOBAL_SEGMENT]
            counts = await store.segment_counts(experiment_id, own) if own else {}
            totals = await store.experiment_totals(experiment_id)
            pooling = await self._pooling(experiment) if own else None
            for segment_key in segments:
                doc = allocation_document(
                    experiment, segment_key, counts.get(segment_key, {}), totals, now, pooling
                )
                ref = (experiment_id, segment_key)
                self.last_run[ref] = time.monotonic()
                if moved(
                    self.published.get(ref), doc["weights"], self.rt.settings.weights_min_change
                ):
                    docs.append(doc)
        await self.rt.send(
            ALLOCATIONS,
            ((allocation_key(d["experiment_id"], d["segment_key"]).encode(), d) for d in docs),
        )
        for d in docs:
            self.published[(d["experiment_id"], d["segment_key"])] = d["weights"]
        metrics.WEIGHTS_PUBLISHED.inc(len(docs))
