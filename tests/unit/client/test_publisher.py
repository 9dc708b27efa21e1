"""The background publisher with a stand-in producer: never blocks, counts what happened."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from streams.client.publisher import DecisionPublisher
from streams.settings import Settings

pytestmark = pytest.mark.unit


class FakeProducer:
    """aiokafka's shape: `send` returns a future the broker's answer resolves."""

    def __init__(self, fail_every: int = 0) -> None:
        self.fail_every = fail_every
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self.sent.append((topic, value, key))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_every and len(self.sent) % self.fail_every == 0:
            future.set_exception(ConnectionError("broker gone"))
        else:
            asyncio.get_running_loop().call_later(0.001, future.set_result, None)
        return future


def _publisher(producer: FakeProducer, max_pending: int = 100) -> DecisionPublisher:
    return DecisionPublisher(
        Settings(),
        "t.decisions",
        max_pending=max_pending,
        producer=producer,  # type: ignore[arg-type]  # a stand-in broker
    )


async def test_decisions_are_sent_keyed_by_visitor_and_counted() -> None:
    producer = FakeProducer(fail_every=5)
    publisher = _publisher(producer)
    await publisher.start()
    for i in range(20):
        publisher.publish({"visitor_id": f"v{i}", "decision_id": str(i)})
    assert producer.sent == [], "publish only queues: the caller never waits"
    assert await publisher.flush(5)
    await publisher.stop()
    assert [(t, orjson.loads(v)["decision_id"], k) for t, v, k in producer.sent] == [
        ("t.decisions", str(i), f"v{i}".encode()) for i in range(20)
    ]
    stats = publisher.stats
    assert (stats.queued, stats.acknowledged, stats.failed, stats.dropped) == (20, 16, 4, 0)


async def test_a_full_queue_drops_the_newest_instead_of_growing() -> None:
    publisher = _publisher(FakeProducer(), max_pending=3)
    await publisher.start()
    for i in range(5):
        publisher.publish({"visitor_id": f"v{i}"})
    await publisher.stop()
    assert (publisher.stats.queued, publisher.stats.dropped, publisher.stats.acknowledged) == (
        3,
        2,
        3,
    )
