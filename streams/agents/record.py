"""`decisions` → the decision log, read by a plain aiokafka consumer instead of a faust agent.

Every decision (the decide stage's, `POST /decide`'s, a `DecisionClient`'s) is read back once
to become the decision of record. Through faust's per-record stream machinery that read cost
about as much CPU as deciding (py-spy, issue 15); here a whole fetch goes to one track
transaction (`track.record_decisions`) with its offsets, so a redelivery is skipped. Kafka's
committed offsets (group `<app id>-decisions`) only say where to start reading again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.errors import KafkaError

from streams import kafka_clients
from streams.agents.track import record_decisions
from streams.pipeline.events import RawEvent
from streams.runtime import Runtime
from streams.topics import DECISIONS

STAGE = "record"  # the label of its batches in logs and metrics
log = logging.getLogger("bandit_stream.record")


async def record_forever(rt: Runtime) -> None:
    """Record decisions until the worker stops; after any error, log it and start again.

    Once the worker stops, no new fetch is taken. A batch that fails then (faust stops its
    producer before this task) is left for whoever reads the partition next: rolled back
    with its offsets, or, if it failed after its commit, with its deltas in the outbox for
    the resend. The process exits normally either way.
    """
    while not rt.stopping:
        try:
            await _record(rt)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if rt.stopping:
                log.info("worker stopping: the decisions in flight are left for the next reader")
                return
            rt.log_failure("recording decisions", exc)
            await asyncio.sleep(1.0)


async def _record(rt: Runtime) -> None:
    s = rt.settings
    consumer = kafka_clients.consumer(
        s,
        rt.topics[DECISIONS],
        group_id=f"{s.app_id}-decisions",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(s.session_timeout_s * 1000),
    )
    await consumer.start()
    try:
        while not rt.stopping:
            fetched = await consumer.getmany(timeout_ms=200, max_records=s.batch_max)
            batch = [
                RawEvent(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                for records in fetched.values()
                for r in records
            ]
            if not batch:
                continue
            await rt.settle(STAGE, batch, record_decisions, faust_acks=False)
            # after a rebalance this may be refused: the offsets in Postgres still hold
            with contextlib.suppress(KafkaError):
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in fetched.items()})
    finally:
        await consumer.stop()
