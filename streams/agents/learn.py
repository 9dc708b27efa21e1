"""segment-deltas → the owner's counts, on the segment partition (`experiment|segment`).

The worker that holds a key's partition is the only writer of that key's rows: each delta
is applied once (its id is recorded with the rows and the consumed offsets, in one
transaction), then the experiment's owner is told that something changed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from streams import metrics
from streams.pipeline.events import RawEvent
from streams.pipeline.learn import Delta, discount_of, fold
from streams.runtime import Runtime
from streams.topics import EXPERIMENT_CHANGES, SEGMENT_DELTAS

STAGE = "learn"
log = logging.getLogger("bandit_stream.learn")


def _deltas(batch: Sequence[RawEvent]) -> list[Delta]:
    out = []
    for event in batch:
        try:
            out.append(Delta.from_document(orjson.loads(event.value or b"")))
        except (ValueError, KeyError, TypeError, AttributeError):
            # written by the track stage of this service: a bug, not bad input
            log.error("malformed segment delta ignored at %s[%d]@%d", *_where(event))
    return out


def _where(event: RawEvent) -> tuple[str, int, int]:
    return event.topic, event.partition, event.offset


async def learn_batch(rt: Runtime, batch: Sequence[RawEvent]) -> None:
    store = await rt.store()
    changed: set[str] = set()
    async with store.learn_batch(STAGE, batch) as tx:
        deltas = _deltas(tx.fresh)
        new = await tx.new_deltas(d.delta_id for d in deltas)
        # once each: a delta resent after a crash can sit twice in one batch
        deltas = list({d.delta_id: d for d in deltas if d.delta_id in new}.values())
        if deltas:
            keys = [(d.experiment_id, d.segment_key, v) for d in deltas for v in d.variants]
            discounts = {}
            for d in deltas:
                experiment = rt.registry.get(d.experiment_id)
                discounts[d.experiment_id] = discount_of(experiment) if experiment else 1.0
            rows = fold(await tx.rows(keys), deltas, discounts, datetime.now(UTC))
            await tx.write(rows)
            changed = {d.experiment_id for d in deltas}
    metrics.EVENTS_IN.labels(topic=SEGMENT_DELTAS).inc(len(batch))
    await rt.send(EXPERIMENT_CHANGES, ((e.encode(), {"experiment_id": e}) for e in sorted(changed)))
