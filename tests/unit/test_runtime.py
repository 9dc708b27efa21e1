"""How a stage settles a batch: outages wait, poison records are isolated and dead-lettered.

The handler here is a plain function that fails on chosen records; what the runtime sends is
captured where the app would hand it to the producer. The real broker and database paths are
covered by the integration tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from streams import errors
from streams.pipeline.events import RawEvent
from streams.runtime import Runtime
from streams.settings import Settings
from streams.topics import DEADLETTER, topic_name

pytestmark = pytest.mark.unit


def _runtime() -> tuple[Runtime, list[tuple[str, bytes | None, dict[str, Any]]]]:
    rt = Runtime(Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", BANDIT_TOPIC_PREFIX="u."))
    sent: list[tuple[str, bytes | None, dict[str, Any]]] = []

    async def send(topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
        sent.extend((topic, key, orjson.loads(value)) for key, value in records)

    rt.send_raw = send
    return rt, sent


def _batch(n: int) -> list[RawEvent]:
    return [RawEvent("u.visits", 0, i, f"k{i}".encode(), b"{}") for i in range(n)]


async def test_a_poison_record_is_isolated_and_the_rest_applied() -> None:
    rt, sent = _runtime()
    applied: list[int] = []

    async def handle(_: Runtime, batch: Any) -> None:
        if any(e.offset == 5 for e in batch):
            raise ValueError("cannot apply record 5")
        applied.extend(e.offset for e in batch)

    await rt.settle("decide", _batch(12), handle)
    assert sorted(applied) == [o for o in range(12) if o != 5], "every other record applied once"
    (dead,) = [doc for topic, _, doc in sent if topic == topic_name(rt.settings, DEADLETTER)]
    assert (dead["reason"], dead["offset"]) == ("processing_error", 5)
    assert "ValueError: cannot apply record 5" in dead["detail"]


async def test_an_outage_waits_and_retries_without_dead_letters() -> None:
    rt, sent = _runtime()
    attempts: list[int] = []

    async def handle(_: Runtime, batch: Any) -> None:
        attempts.append(len(batch))
        if len(attempts) < 4:
            raise ConnectionRefusedError("database down")

    await rt.settle("track", _batch(8), handle)
    assert attempts == [8, 8, 8, 8], "the whole batch again each time, never split"
    assert sent == []


def test_transient_and_permanent_errors_are_told_apart() -> None:
    import asyncpg

    assert errors.is_transient(ConnectionRefusedError())
    assert errors.is_transient(asyncpg.exceptions.DeadlockDetectedError("deadlock"))
    assert errors.is_transient(errors.TransientError("later"))
    assert errors.is_transient(asyncpg.exceptions.InternalClientError("cannot switch to state 15"))
    wrapped = RuntimeError("send failed")
    wrapped.__cause__ = TimeoutError()
    assert errors.is_transient(wrapped)
    assert not errors.is_transient(FileNotFoundError("sql/ is missing"))
    assert not errors.is_transient(asyncpg.exceptions.NumericValueOutOfRangeError("overflow"))
    assert not errors.is_transient(ValueError("bug"))


async def test_a_huge_key_does_not_make_a_dead_letter_too_large_to_send() -> None:
    rt, sent = _runtime()

    async def handle(_: Runtime, batch: Any) -> None:
        raise ValueError("always")

    huge = RawEvent("u.visits", 0, 0, b"k" * 650_000, b"\x01" * 65_536)
    await rt.settle("decide", [huge], handle)
    ((_, key, doc),) = sent
    assert key is not None and len(key) < 100 and key.startswith(b"blake2b:")
    assert len(orjson.dumps(doc)) < 1_000_000


async def test_a_poison_record_is_handed_to_what_holds_it_once() -> None:
    rt, sent = _runtime()
    released: list[int] = []

    async def handle(_: Runtime, batch: Any) -> None:
        if any(e.offset == 3 for e in batch):
            raise ValueError("cannot apply record 3")

    async def poisoned(event: RawEvent) -> None:
        released.append(event.offset)

    await rt.settle("sweep", _batch(8), handle, poisoned)
    assert released == [3], "only the record that fails alone is let go, once"
    assert [doc["offset"] for _, _, doc in sent] == [3]


async def test_a_failure_while_stopping_goes_to_the_caller_when_faust_does_not_ack() -> None:
    """The plain consumers (decide, record) commit only after a batch, the sweep keeps its
    offsets in Postgres: a batch that fails while the worker stops must end their loop, not
    the process (exit 70 would make a SIGTERM look like a crash)."""
    rt, sent = _runtime()
    rt.stopping = True

    async def handle(_: Runtime, batch: Any) -> None:
        raise ConnectionError("the producer is stopped")

    with pytest.raises(ConnectionError):
        await rt.settle("record", _batch(4), handle, faust_acks=False)
    assert sent == [], "nothing dead-lettered: the batch is left for the next reader"


class _TP:
    """faust's TopicPartition as `Runtime.committable` reads it."""

    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


async def test_offsets_are_not_committed_past_a_batch_until_it_is_applied() -> None:
    """faust acks a batch when its stream stops, while the batch may still be waiting for the
    database (a SIGTERM during an outage): its partitions' commits stay at its first record
    until it is applied, and other partitions commit as faust says."""
    rt, _ = _runtime()
    release = asyncio.Event()

    async def handle(_: Runtime, batch: Any) -> None:
        await release.wait()

    batch = [RawEvent("u.segment-deltas", 0, o, None, b"{}") for o in (7, 8, 9)]
    batch += [RawEvent("u.segment-deltas", 2, o, None, b"{}") for o in (3, 4)]
    running = asyncio.ensure_future(rt.run_batch("learn", batch, handle))
    await asyncio.sleep(0.01)
    p0, p1, p2 = _TP("u.segment-deltas", 0), _TP("u.segment-deltas", 1), _TP("u.segment-deltas", 2)
    acked = {p0: 10, p1: 6, p2: 5}  # faust would commit past every acked record
    assert rt.committable(acked) == {p0: 7, p1: 6, p2: 3}, "held at the batch's first records"
    release.set()
    await running
    assert rt.committable(acked) == acked, "once applied, nothing is held"
