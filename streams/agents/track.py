"""decisions + exposures + conversions → the state of record, on the visitor partition.

faust reads exposures and conversions (`track_batch`); decisions come from a plain consumer
(`agents.plain`, `record_decisions`): the same transaction, on the same watermark rows.

One Postgres transaction per batch holds its effects, its offsets and its segment deltas
(outbox); the deltas are sent to `segment-deltas` after the commit. What waits is re-read
in the same transaction as soon as what it waits for arrives, and by `sweep_waiting` when
its experiment becomes known or its wait is over.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import orjson

from streams import metrics
from streams.pipeline.events import RawEvent, Reject
from streams.pipeline.replica import allocation_key
from streams.pipeline.track import (
    Attributed,
    DecisionRecord,
    Exposure,
    Topics,
    Waiting,
    Waits,
    attribute,
    classify,
    dedupe_conversions,
    dedupe_exposures,
    deltas,
    duplicate_exposure,
    join_decisions,
)
from streams.runtime import Runtime
from streams.sink.batches import Outgoing, TrackBatch
from streams.topics import CONVERSIONS, DECISIONS, EXPOSURES, SEGMENT_DELTAS

STAGE = "track"
SWEEP = "sweep"  # the label of the re-reads of waiting records in logs and metrics
MAX_ROUNDS = 8  # a woken record can wake others (decision → exposure → conversion)
log = logging.getLogger("bandit_stream.track")


def _topics(rt: Runtime) -> Topics:
    return Topics(rt.topics[DECISIONS], rt.topics[EXPOSURES], rt.topics[CONVERSIONS])


def _waits(rt: Runtime) -> Waits:
    s = rt.settings
    return Waits(timedelta(seconds=s.wait_grace_s), timedelta(seconds=s.unknown_experiment_wait_s))


async def track_batch(
    rt: Runtime, batch: Sequence[RawEvent], also_lock: Iterable[tuple[str, int]] = ()
) -> None:
    store = await rt.store()
    async with store.track_batch(STAGE, batch, also_lock) as tx:
        if len(tx.fresh) < len(batch):
            metrics.REPLAYED.labels(stage=STAGE).inc(len(batch) - len(tx.fresh))
        await apply(rt, tx, tx.fresh)
    await send_outbox(rt, tx.outbox)
    for event in batch:
        metrics.EVENTS_IN.labels(topic=rt.base_of.get(event.topic, event.topic)).inc()


async def record_decisions(rt: Runtime, batch: Sequence[RawEvent]) -> None:
    """A batch of `decisions` (read by `agents.plain`, not by faust): a track batch that
    also holds the exposures' and conversions' watermark rows of its visitor partitions, so
    that a decision and an exposure waiting for it are never applied side by side (each
    would miss the other), whichever worker reads which."""
    partitions = {e.partition for e in batch}
    held = [(rt.topics[base], p) for base in (EXPOSURES, CONVERSIONS) for p in partitions]
    await track_batch(rt, batch, held)


async def apply(
    rt: Runtime, tx: TrackBatch, events: Sequence[RawEvent], *, expired: Sequence[RawEvent] = ()
) -> None:
    """Every effect of these records in the open transaction; dead letters sent before commit.

    `expired`: records whose wait is over: attributed to what is known now, or refused and
    kept as expired. Records a round makes ready (an exposure's decision arrived, a
    conversion's exposure) are read again in the next round of the same transaction.
    """
    now = datetime.now(UTC)
    topics, waits = _topics(rt), _waits(rt)
    exposed: list[tuple[Exposure, DecisionRecord]] = []
    attributed: list[Attributed] = []
    refused: list[Reject] = []
    waiting: list[Waiting] = []
    gone: list[Waiting] = []
    rounds: list[tuple[Sequence[RawEvent], bool]] = [(events, False), (expired, True)]
    for _ in range(MAX_ROUNDS):
        woken: list[RawEvent] = []
        for batch, is_expired in rounds:
            if not batch:
                continue
            c = classify(batch, topics, rt.registry, rt.limits, waits, now, expired=is_expired)
            later = gone if is_expired else waiting
            refused += c.rejects
            later += c.waiting
            await tx.insert_decisions(c.decisions)
            woken += await tx.take_waiting(decision_ids=[d.decision_id for d in c.decisions])
            records = await tx.decisions_of(e.decision_id for e in c.exposures)
            matched, unmatched, rejects = join_decisions(
                c.exposures, records, waits.grace, expired=is_expired
            )
            matched, duplicates = dedupe_exposures(matched)
            new = await tx.insert_exposures(matched)
            fresh = [(e, d) for e, d in matched if e.decision_id in new]
            refused += rejects + duplicates
            refused += [duplicate_exposure(e) for e, _ in matched if e.decision_id not in new]
            later += unmatched
            exposed += fresh
            woken += await tx.take_waiting(
                pairs=[(d.experiment_id, d.visitor_id) for _, d in fresh]
            )
            counted = await tx.counted_conversions(x.event_id for x in c.conversions)
            conversions, duplicates = dedupe_conversions(c.conversions, counted)
            pairs = [(x.experiment_id, x.visitor_id) for x in conversions]
            done, unmatched, rejects = attribute(
                conversions,
                await tx.exposure_candidates(pairs),
                await tx.unexposed_decisions(pairs),
                waits.grace,
            )
            await tx.record_conversions(done)
            attributed += done
            refused += duplicates + rejects
            later += unmatched
        # parked now, so that what the next round makes ready can wake them too
        await tx.park(waiting)
        metrics.WAITING.inc(len(waiting))
        waiting = []
        if not woken:
            break
        rounds = [(woken, False)]
    else:
        log.warning("records still waking after %d rounds; the rest wait", MAX_ROUNDS)
    await tx.park(gone, expired_at=now)
    await tx.write_outbox(deltas(exposed, attributed))
    metrics.EXPIRED.inc(len(gone))
    await rt.dead_letter(refused)


async def send_outbox(rt: Runtime, delta_ids: Sequence[int]) -> None:
    """Send committed deltas to their owners, then forget them (a crash resends them)."""
    if delta_ids:
        await _send_deltas(rt, await (await rt.store()).outbox_rows(delta_ids))


async def _send_deltas(rt: Runtime, rows: Sequence[Outgoing]) -> None:
    await rt.send(
        SEGMENT_DELTAS,
        (
            (
                allocation_key(e, seg).encode(),
                {
                    "delta_id": i,
                    "experiment_id": e,
                    "segment_key": seg,
                    "variants": orjson.Fragment(payload),
                },
            )
            for i, e, seg, payload in rows
        ),
    )
    await (await rt.store()).sent([r[0] for r in rows])


async def sweep_waiting(rt: Runtime, partitions: Iterable[int], limit: int = 500) -> None:
    """Re-read what waits on these visitor partitions: its experiment is known now, or its
    wait is over. Each set runs under its partition's watermark locks, like a batch, and is
    settled like one: a record that fails alone is dead-lettered and no longer waits, so it
    cannot hold back the records behind it."""
    store = await rt.store()
    known = [e.experiment_id for e in rt.registry.experiments()]
    due = await store.partitions_due(known, datetime.now(UTC))
    for partition in sorted(due.intersection(partitions)):
        while True:
            events = await store.due_waiting(partition, known, datetime.now(UTC), limit)
            if events:
                await rt.settle(
                    SWEEP, events, _apply_waiting, store.forget_waiting, faust_acks=False
                )
            if len(events) < limit:
                break


async def _apply_waiting(rt: Runtime, events: Sequence[RawEvent]) -> None:
    """Take these waiting records (of one partition) out and apply them, in one transaction."""
    store = await rt.store()
    topics = [rt.topics[DECISIONS], rt.topics[EXPOSURES], rt.topics[CONVERSIONS]]
    async with store.waiting_batch(STAGE, topics, events[0].partition) as tx:
        ready, expired = await tx.take_due(events, datetime.now(UTC))
        if ready or expired:
            await apply(rt, tx, ready, expired=expired)
    await send_outbox(rt, tx.outbox)


async def resend_outbox(rt: Runtime, older_than_s: float = 5.0) -> None:
    """Send the deltas a crash left between their commit and their send."""
    store = await rt.store()
    rows = await store.unsent_outbox(older_than_s)
    if rows:
        log.info("sending %d segment deltas left unsent", len(rows))
        await _send_deltas(rt, rows)
