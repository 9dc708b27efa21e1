"""visits → decisions, on the visitor partition, in batches (one Kafka hop, no table write)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from streams import metrics
from streams.pipeline.decide import decide_all, prepare_visits, sticky_keys
from streams.pipeline.events import RawEvent
from streams.runtime import Runtime
from streams.topics import DECISIONS, VISITS


async def decide_batch(rt: Runtime, batch: Sequence[RawEvent]) -> None:
    """Decide every valid visit of the batch; dead-letter the rest. Raises only on I/O."""
    now = datetime.now(UTC)
    visits, rejects = prepare_visits(batch, rt.registry, rt.limits, now, rt.recent_visits)
    keys = sticky_keys(visits)
    sticky = await (await rt.store()).sticky(keys) if keys else {}
    decisions = decide_all(visits, rt.weights, sticky, now)
    await rt.send(DECISIONS, ((d["visitor_id"].encode(), d) for d in decisions))
    await rt.dead_letter(rejects)
    metrics.EVENTS_IN.labels(topic=VISITS).inc(len(batch))
    sent_ms = time.time() * 1000
    for visit in visits:
        if visit.event.timestamp_ms is not None:
            metrics.DECISION_LATENCY.observe(max(0.0, sent_ms - visit.event.timestamp_ms) / 1000)
