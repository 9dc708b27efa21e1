"""Full replicas of the compacted `experiments` and `allocations` topics, without faust.

Used by every worker (`streams.agents.replicas`) and by every `DecisionClient`, so that both
decide from the same records applied by the same rules. Not faust GlobalTables (replicas that
stop updating with several workers: robinhood/faust #716, #541): a plain consumer outside any
group, assigned every partition and reading from the beginning. Ready once it reached the end
offsets it saw at start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.client import kafka
from streams.contracts import validate
from streams.errors import ExperimentError
from streams.experiments import ExperimentRegistry
from streams.pipeline.replica import WeightsReplica
from streams.settings import Settings
from streams.topics import ALLOCATIONS, EXPERIMENTS, topic_name

log = logging.getLogger("bandit_stream.replicas")

OnUpdate = Callable[[str], None]
"""Called with "experiments" or "allocations" after a record changed a replica."""


@dataclass
class Replicas:
    """What one process replicates: the experiments, the weights, and whether it caught up."""

    registry: ExperimentRegistry = field(default_factory=ExperimentRegistry)
    weights: WeightsReplica = field(default_factory=WeightsReplica)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def apply_experiment(registry: ExperimentRegistry, key: bytes | None, value: bytes | None) -> bool:
    """Apply one `experiments` record (a tombstone deletes); False when it was ignored."""
    if key is None:
        return False
    experiment_id = key.decode("utf-8", "replace")
    try:
        registry.apply(experiment_id, orjson.loads(value) if value is not None else None)
    except (ExperimentError, ValueError, TypeError, KeyError) as exc:
        log.error("experiment %r ignored: %s", experiment_id, exc)
        return False
    return True


def apply_allocation(weights: WeightsReplica, value: bytes | None, published_ms: int = 0) -> bool:
    """Apply one `allocations` record (published at `published_ms`, its Kafka timestamp)."""
    if value is None:
        return False
    try:
        doc = orjson.loads(value)
    except ValueError:
        log.error("allocation record is not JSON; ignored")
        return False
    rejected = validate("allocations", doc)
    if rejected is not None:
        log.error("allocation record ignored: %s", rejected.detail)
        return False
    return weights.apply(doc, published_ms)


async def replicate_forever(
    settings: Settings, replicas: Replicas, on_update: OnUpdate | None = None
) -> None:
    """Replicate until cancelled; restart the consumer after any error (never raise)."""
    while True:
        try:
            await replicate(settings, replicas, on_update)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replica reader failed; restarting in 1 s")
            await asyncio.sleep(1.0)


async def replicate(
    settings: Settings, replicas: Replicas, on_update: OnUpdate | None = None
) -> None:
    """One consumer session over both topics (of `settings`), from their beginning."""
    experiments_topic = topic_name(settings, EXPERIMENTS)
    allocations_topic = topic_name(settings, ALLOCATIONS)
    consumer = kafka.consumer(
        settings,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = await _partitions(consumer, experiments_topic)
        tps += await _partitions(consumer, allocations_topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while True:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    if tp.topic == experiments_topic:
                        changed = apply_experiment(replicas.registry, record.key, record.value)
                        replica = "experiments"
                    else:
                        changed = apply_allocation(replicas.weights, record.value, record.timestamp)
                        replica = "allocations"
                    if changed and on_update is not None:
                        on_update(replica)
            if not replicas.ready.is_set() and await _caught_up(consumer, end):
                log.info(
                    "replicas ready: %d experiments, %d allocations",
                    len(replicas.registry),
                    len(replicas.weights),
                )
                replicas.ready.set()
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    for _ in range(600):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    msg = f"topic {topic} does not exist; run `bandit-stream topics create`"
    raise RuntimeError(msg)


async def _caught_up(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True
