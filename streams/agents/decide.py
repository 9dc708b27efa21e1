"""visits → decisions, on the visitor partition, in batches (one Kafka hop, no table write)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from streams import metrics
from streams.errors import is_transient
from streams.pipeline.decide import decide_all, prepare_visits, sticky_keys
from streams.pipeline.events import RawEvent
from streams.runtime import Runtime
from streams.topics import DECISIONS, VISITS

log = logging.getLogger("bandit_stream.decide")


async def _sticky(rt: Runtime, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Sticky visitors' last exposures; during a database outage, decide without them."""
    if not keys:
        return {}
    try:
        return await (await rt.store()).sticky(keys)
    except Exception as exc:
        if not is_transient(exc):
            raise
        metrics.STICKY_FALLBACKS.inc()
        rt.log_failure("the sticky lookup (visits decided from the weights meanwhile)", exc)
        return {}


async def decide_batch(rt: Runtime, batch: Sequence[RawEvent]) -> None:
    """Decide every valid visit of the batch; dead-letter the rest. Raises only on I/O."""
    now = datetime.now(UTC)
    visits, rejects = prepare_visits(batch, rt.registry, rt.limits, now, rt.recent_visits)
    sticky = await _sticky(rt, sticky_keys(visits))
    decisions = decide_all(visits, rt.weights, sticky, now)
    await rt.send(DECISIONS, ((d["visitor_id"].encode(), d) for d in decisions))
    await rt.dead_letter(rejects)
    metrics.EVENTS_IN.labels(topic=VISITS).inc(len(batch))
    sent_ms = time.time() * 1000
    for visit in visits:
        if visit.event.timestamp_ms is not None:
            metrics.DECISION_LATENCY.observe(max(0.0, sent_ms - visit.event.timestamp_ms) / 1000)
