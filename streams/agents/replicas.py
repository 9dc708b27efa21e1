"""Each worker's full replicas of the compacted `experiments` and `allocations` topics.

Not faust GlobalTables (replicas that stop updating with several workers: robinhood/faust
#716, #541): a plain consumer per worker, outside any group, assigned every partition and
reading from the beginning. Ready once it reached the end offsets it saw at start.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import metrics
from streams.contracts import validate
from streams.errors import ExperimentError
from streams.runtime import Runtime
from streams.topics import ALLOCATIONS, EXPERIMENTS

log = logging.getLogger("bandit_stream.replicas")


async def run_replicas(rt: Runtime) -> None:
    """Replicate forever; restart the consumer after any error (never crash the worker)."""
    while True:
        try:
            await _replicate(rt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replica reader failed; restarting in 1 s")
            await asyncio.sleep(1.0)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    for _ in range(600):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    msg = f"topic {topic} does not exist; run `bandit-stream topics create`"
    raise RuntimeError(msg)


async def _replicate(rt: Runtime) -> None:
    experiments, allocations = rt.topics[EXPERIMENTS], rt.topics[ALLOCATIONS]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=rt.settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = await _partitions(consumer, experiments) + await _partitions(consumer, allocations)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    if tp.topic == experiments:
                        _apply_experiment(rt, record.key, record.value)
                    else:
                        _apply_allocation(rt, record.value)
            if not rt.replicas_ready.is_set() and await _caught_up(consumer, end):
                log.info(
                    "replicas ready: %d experiments, %d allocations",
                    len(rt.registry),
                    len(rt.weights),
                )
                rt.replicas_ready.set()
    finally:
        await consumer.stop()


async def _caught_up(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True


def _apply_experiment(rt: Runtime, key: bytes | None, value: bytes | None) -> None:
    if key is None:
        return
    experiment_id = key.decode("utf-8", "replace")
    try:
        rt.registry.apply(experiment_id, orjson.loads(value) if value is not None else None)
        metrics.REPLICA_UPDATES.labels(replica="experiments").inc()
    except (ExperimentError, ValueError, TypeError, KeyError) as exc:
        log.error("experiment %r ignored: %s", experiment_id, exc)


def _apply_allocation(rt: Runtime, value: bytes | None) -> None:
    if value is None:
        return
    try:
        doc = orjson.loads(value)
    except ValueError:
        log.error("allocation record is not JSON; ignored")
        return
    rejected = validate("allocations", doc)
    if rejected is not None:
        log.error("allocation record ignored: %s", rejected.detail)
        return
    if rt.weights.apply(doc):
        metrics.REPLICA_UPDATES.labels(replica="allocations").inc()
