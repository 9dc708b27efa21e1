"""The real broker does what the service relies on: groups, commits, transactions."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import kafka_clients
from streams.admin import ensure_topics
from streams.settings import Settings
from streams.topics import TopicSpec

pytestmark = pytest.mark.integration


async def _topic(settings: Settings, name: str, partitions: int) -> str:
    full = f"{settings.topic_prefix}{name}"
    spec = TopicSpec(base=name, name=full, partitions=partitions, key="k", contract=None)
    await ensure_topics(settings, [spec])
    return full


async def _drain(consumer: AIOKafkaConsumer, want: int, timeout: float = 30) -> list[bytes]:
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got) < want and loop.time() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            got.extend(r.value for r in records if r.value is not None)
    return got


async def test_second_consumer_resumes_from_committed_offsets(settings: Settings) -> None:
    topic = await _topic(settings, "resume", partitions=3)
    producer = kafka_clients.producer(settings)
    await producer.start()
    try:
        for i in range(300):
            await producer.send(topic, key=f"k{i}".encode(), value=f"{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()
    group = f"{settings.app_id}-group"

    def consumer() -> AIOKafkaConsumer:
        return kafka_clients.consumer(
            settings,
            topic,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=50,
        )

    first = consumer()
    await first.start()
    try:
        assignment: set[TopicPartition] = set()
        for _ in range(100):
            assignment = first.assignment()
            if assignment:
                break
            await asyncio.sleep(0.1)
        assert len(assignment) == 3, "one consumer in the group gets every partition"
        seen_first = await _drain(first, 120)
        await first.commit()
    finally:
        await first.stop()

    second = consumer()
    await second.start()
    try:
        seen_second = await _drain(second, 300 - len(seen_first))
    finally:
        await second.stop()

    assert seen_first, "the first consumer read something"
    assert len(set(seen_first) & set(seen_second)) == 0, "nothing committed is read again"
    assert sorted(map(int, seen_first + seen_second)) == list(range(300)), "nothing is lost"


async def test_read_committed_never_sees_aborted_messages(settings: Settings) -> None:
    topic = await _topic(settings, "tx", partitions=2)
    producer = kafka_clients.producer(settings, transactional_id=f"{settings.app_id}-tx")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(10):
                await producer.send(topic, key=b"a", value=f"committed-{i}".encode())
        await producer.begin_transaction()
        for i in range(10):
            await producer.send(topic, key=b"a", value=f"aborted-{i}".encode())
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, key=b"a", value=b"committed-last")
    finally:
        await producer.stop()

    async def read(isolation: str) -> list[bytes]:
        consumer = kafka_clients.consumer(
            settings,
            topic,
            isolation_level=isolation,
            auto_offset_reset="earliest",
            group_id=None,
        )
        await consumer.start()
        try:
            return await _drain(consumer, 11 if isolation == "read_committed" else 21, 15)
        finally:
            await consumer.stop()

    committed = await read("read_committed")
    assert committed == [f"committed-{i}".encode() for i in range(10)] + [b"committed-last"]
    uncommitted = await read("read_uncommitted")
    assert sum(v.startswith(b"aborted") for v in uncommitted) == 10, (
        "the aborted messages are in the log: only read_committed hides them"
    )


async def test_send_all_puts_each_record_where_producer_send_would_in_order(
    settings: Settings,
) -> None:
    """The stages' batched send must keep the partition of every key (consumers of one
    visitor, owners of one segment, rely on it) and the order within a partition."""
    batched = await _topic(settings, "send-all", partitions=5)
    single = await _topic(settings, "send-one", partitions=5)
    # 3,000 records of ~100 bytes: several full 16 kB batches per partition
    records = [(f"visitor-{i % 97}".encode(), f"{i:06d}".encode() * 16) for i in range(3000)]
    records += [(None, b"no key")] * 7
    producer = kafka_clients.producer(settings, acks="all")
    await producer.start()
    try:
        await kafka_clients.send_all(producer, batched, records)
        for key, value in records:
            await producer.send(single, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()

    async def read(topic: str) -> dict[int, list[tuple[bytes | None, bytes]]]:
        consumer = kafka_clients.consumer(settings, topic, auto_offset_reset="earliest")
        await consumer.start()
        got: dict[int, list[tuple[bytes | None, bytes]]] = {}
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while sum(map(len, got.values())) < len(records) and loop.time() < deadline:
                for tp, rs in (await consumer.getmany(timeout_ms=500)).items():
                    got.setdefault(tp.partition, []).extend((r.key, r.value) for r in rs)
        finally:
            await consumer.stop()
        return got

    by_send_all, by_send = await read(batched), await read(single)
    assert sum(map(len, by_send_all.values())) == len(records), "every record arrived once"
    keyed = {p: [r for r in rs if r[0] is not None] for p, rs in by_send_all.items()}
    assert keyed == {p: [r for r in rs if r[0] is not None] for p, rs in by_send.items()}
    assert sorted(v for rs in by_send_all.values() for k, v in rs if k is None) == [b"no key"] * 7
