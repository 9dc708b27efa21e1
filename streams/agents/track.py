"""exposures + conversions → the state of record, on the visitor partition, in batches.

The batch's effects and its offsets commit in one Postgres transaction (streams/sink/state.py);
then the segments it changed are announced on `segment-deltas` for the learn stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from streams import metrics
from streams.pipeline.events import RawEvent, Reject
from streams.pipeline.track import attribute, dedupe_exposures, duplicate_exposure, prepare_track
from streams.pipeline.replica import GLOBAL_SEGMENT, allocation_key
from streams.runtime import Runtime
from streams.topics import EXPOSURES, SEGMENT_DELTAS

STAGE = "track"


async def track_batch(rt: Runtime, batch: Sequence[RawEvent]) -> None:
    store = await rt.store()
    now = datetime.now(UTC)
    async with store.track_batch(STAGE, batch) as tx:
        if len(tx.fresh) < len(batch):
            metrics.REPLAYED.labels(stage=STAGE).inc(len(batch) - len(tx.fresh))
        exposures, conversions, rejects = prepare_track(
            tx.fresh, rt.topics[EXPOSURES], rt.registry, rt.limits, now
        )
        exposures, duplicates = dedupe_exposures(exposures)
        new = await tx.insert_exposures(exposures)
        refused: list[Reject] = rejects + duplicates
        refused += [duplicate_exposure(e) for e in exposures if e.decision_id not in new]
        conversions = await tx.unpark_conversions(sorted(tx.exposed_pairs)) + conversions
        pairs = sorted({(c.experiment_id, c.visitor_id) for c in conversions})
        candidates = await tx.exposure_candidates(pairs)
        attributed, conversion_rejects, waiting = attribute(conversions, candidates)
        refused += conversion_rejects
        await tx.record_conversions(attributed)
        await tx.park_conversions(waiting)
        metrics.CONVERSIONS_WAITING.inc(len(waiting))
        changed = tx.changed_segments()
        changed |= {(experiment_id, GLOBAL_SEGMENT) for experiment_id, _ in changed}
        # sent before the commit: a crash in between re-sends them (idempotent), never loses
        await rt.send(
            SEGMENT_DELTAS,
            (
                (allocation_key(e, s).encode(), {"experiment_id": e, "segment_key": s})
                for e, s in sorted(changed)
            ),
        )
        await rt.dead_letter(refused)
    for event in batch:
        metrics.EVENTS_IN.labels(topic=rt.base_of.get(event.topic, event.topic)).inc()
