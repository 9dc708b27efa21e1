"""POST /decide's handler with a stand-in runtime: grouping, refusals, an unavailable store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.agents.http import HttpDecider
from streams.contracts import format_timestamp
from streams.experiments import ExperimentRegistry, new_experiment_document
from streams.pipeline.events import Limits, RecentIds
from streams.pipeline.replica import WeightsReplica

pytestmark = pytest.mark.unit


class Body:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.content_length: int | None = len(data)
        self.content = self

    async def read(self, n: int) -> bytes:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


class Store:
    def __init__(self, fail: Exception | None) -> None:
        self.fail = fail
        self.lookups: list[list[tuple[str, str]]] = []

    async def sticky(self, keys: list[tuple[str, str]]) -> dict[Any, Any]:
        self.lookups.append(list(keys))
        await asyncio.sleep(0.01)  # a round trip: later requests gather meanwhile
        if self.fail is not None:
            raise self.fail
        return {}


class FakeRuntime:
    def __init__(self, fail: Exception | None = None) -> None:
        self.registry = ExperimentRegistry()
        self.registry.apply("exp", new_experiment_document("exp", ["a", "b"]))
        self.weights = WeightsReplica()
        self.limits = Limits(65_536, timedelta(seconds=300))
        self.recent_visits = RecentIds()
        self.replicas_ready = asyncio.Event()
        self.replicas_ready.set()
        self._store = Store(fail)
        self.sent: list[list[dict[str, Any]]] = []
        self.failures: list[str] = []

    async def store(self) -> Store:
        return self._store

    def log_failure(self, what: str, exc: BaseException) -> None:
        self.failures.append(what)

    async def send(self, base: str, records: Any) -> int:
        docs = [doc for _, doc in records]
        self.sent.append(docs)
        return len(docs)


def _visit(i: int) -> dict[str, Any]:
    return {
        "event_id": f"event-{i}",
        "experiment_id": "exp",
        "visitor_id": f"visitor-{i}",
        "occurred_at": format_timestamp(datetime.now(UTC)),
    }


async def test_concurrent_requests_share_one_lookup_and_one_send() -> None:
    rt = FakeRuntime()
    decider = HttpDecider(rt)  # type: ignore[arg-type]
    first = await decider.answer(Body(orjson.dumps(_visit(0))))
    bodies = [orjson.dumps(_visit(i)) for i in range(1, 6)]
    bodies.append(orjson.dumps([_visit(6), _visit(7)]))
    answers = await asyncio.gather(*(decider.answer(Body(b)) for b in bodies))
    assert first.status == 200 and all(a.status == 200 for a in answers)
    assert [orjson.loads(a.body)["event_id"] for a in answers[:5]] == [
        f"event-{i}" for i in range(1, 6)
    ]
    assert [d["event_id"] for d in orjson.loads(answers[5].body)] == ["event-6", "event-7"]
    assert len(rt._store.lookups) == 2, "the first request alone, then the 6 others together"
    assert [len(docs) for docs in rt.sent] == [1, 7]


async def test_refusals_and_a_failing_lookup_are_answered() -> None:
    rt = FakeRuntime(fail=ValueError("a bug, not an outage"))
    decider = HttpDecider(rt)  # type: ignore[arg-type]
    down = await decider.answer(Body(orjson.dumps(_visit(1))))
    unknown = await decider.answer(Body(orjson.dumps({**_visit(2), "experiment_id": "x"})))
    huge = Body(b"{}")
    huge.content_length = 10 * 1024 * 1024
    assert (down.status, orjson.loads(down.body)["reason"]) == (503, "unavailable")
    assert (unknown.status, orjson.loads(unknown.body)["reason"]) == (404, "unknown_experiment")
    assert (await decider.answer(huge)).status == 413
    assert rt.sent == []
    rt.replicas_ready.clear()
    assert (await decider.answer(Body(orjson.dumps(_visit(3))))).status == 503


async def test_a_database_outage_decides_from_the_weights_like_the_decide_stage() -> None:
    rt = FakeRuntime(fail=ConnectionError("database down"))
    answer = await HttpDecider(rt).answer(Body(orjson.dumps(_visit(1))))  # type: ignore[arg-type]
    assert answer.status == 200 and orjson.loads(answer.body)["source"] == "uniform"
    assert len(rt.sent) == 1
