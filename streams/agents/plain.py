"""The stages read by plain aiokafka consumers instead of faust agents: decide, record, learn.

They keep no state that faust manages. Through faust's per-record stream machinery (one
`wait_first` with two tasks, a conductor dispatch, sensors and a stream iteration per
record) reading decide and record cost more CPU than applying them (py-spy, issue 15), and
faust delivers every topic of a worker through one loop, so learn's deltas waited behind a
full buffer of exposures (the counts trailed the decisions by ~2 s in a backlog). Here a whole
fetch is one batch, settled by `Runtime.settle` like an agent's, and its offsets are
committed to Kafka after it is applied, in the group `<app id>-<stage>`:

- **decide** (`visits`, group `<app id>-decide`): Kafka's committed offsets are the only
  record of progress; a batch redelivered after a crash or a rebalance is decided again with
  the same decision ids, weights version and variants (`agents.decide`), and the record stage
  keeps the first copy.
- **record** (`decisions`, group `<app id>-record`): a fetch goes into one track transaction
  with its offsets (`track.record_decisions`), so a redelivery is skipped; Kafka's offsets
  only say where to start reading again.
- **learn** (`segment-deltas`, group `<app id>-learn`): the same, with `store.learn_batch`
  (the deltas' ids are recorded too, so a delta sent twice is applied once). Two consumers
  holding a partition for a moment during a rebalance serialise on its watermark row: the
  partition's counts still have one writer at a time, and the second skips what the first
  applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiokafka.errors import KafkaError

from streams import kafka_clients
from streams.agents.decide import decide_batch
from streams.agents.learn import learn_batch
from streams.agents.track import record_decisions
from streams.pipeline.events import RawEvent
from streams.runtime import BatchHandler, Runtime
from streams.topics import DECISIONS, SEGMENT_DELTAS, VISITS

log = logging.getLogger("bandit_stream.plain")


@dataclass(frozen=True)
class PlainStage:
    name: str  # the label of its batches in logs and metrics, and its group's suffix
    topic: str  # base name (`streams.topics`)
    handle: BatchHandler

    def group(self, app_id: str) -> str:
        return f"{app_id}-{self.name}"


DECIDE = PlainStage("decide", VISITS, decide_batch)
RECORD = PlainStage("record", DECISIONS, record_decisions)
LEARN = PlainStage("learn", SEGMENT_DELTAS, learn_batch)
STAGES = (DECIDE, RECORD, LEARN)


async def consume_forever(rt: Runtime, stage: PlainStage) -> None:
    """Apply the stage's records until the worker stops; after any error, log it and start
    again from the committed offsets.

    Once the worker stops, no new fetch is taken. A batch that fails then (faust stops its
    producer before this task) is not committed: Kafka gives it to whoever reads the
    partition next. The process exits normally either way.
    """
    while not rt.stopping:
        try:
            await _consume(rt, stage)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if rt.stopping:
                log.info("worker stopping: the %s batch in flight is left", stage.name)
                return
            rt.log_failure(f"the {stage.name} stage's consumer", exc)
            await asyncio.sleep(1.0)


async def _consume(rt: Runtime, stage: PlainStage) -> None:
    s = rt.settings
    consumer = kafka_clients.consumer(
        s,
        rt.topics[stage.topic],
        group_id=stage.group(s.app_id),
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
            await rt.settle(stage.name, batch, stage.handle, faust_acks=False)
            # refused after a rebalance: the partition's next reader starts before this batch
            with contextlib.suppress(KafkaError):
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in fetched.items()})
    finally:
        await consumer.stop()
