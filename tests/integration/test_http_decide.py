"""POST /decide on a running worker: decisions out, published, and refusals with reasons."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from streams.contracts import validate
from streams.settings import Settings
from streams.sink.experiments import set_status
from tests.integration.pipeline import (
    DESKTOP_CHROME,
    Pipeline,
    create_experiment,
    prepare,
    read,
    visit,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pipeline(settings: Settings, tmp_path: Path, fresh_database: str) -> Pipeline:
    return await prepare(settings, tmp_path, fresh_database)


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, Any]:
    data = io.BytesIO(body)  # aiohttp warns about large raw bytes bodies
    async with session.post(url, data=data, headers={"content-type": "application/json"}) as r:
        return r.status, orjson.loads(await r.read())


async def test_decide_over_http(pipeline: Pipeline) -> None:
    await create_experiment(pipeline, "web")
    await create_experiment(pipeline, "held")
    await set_status(pipeline.settings, "held", "stopped")
    worker = pipeline.worker().start()
    try:
        await asyncio.to_thread(worker.wait_http_ready)
        url = f"http://127.0.0.1:{worker.web_port}/decide"
        one = visit("web", "visitor-1")
        many = [
            visit("web", f"visitor-{i}", ua=DESKTOP_CHROME, utm_source="google") for i in (2, 3)
        ]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            single = await _post(session, url, orjson.dumps(one))
            array = await _post(session, url, orjson.dumps(many))
            retried = await _post(session, url, orjson.dumps(one))
            empty = await _post(session, url, b"[]")
            refusals = {
                name: await _post(session, url, body)
                for name, body in {
                    "malformed": b"{not json",
                    "schema": orjson.dumps({"event_id": "x"}),
                    "unknown": orjson.dumps(visit("nope", "v")),
                    "stopped": orjson.dumps(visit("held", "v")),
                    "oversized": b"{" + b" " * 70_000 + b"}",
                    "too_large": b"[" + b" " * (1024 * 1024 + 10) + b"]",
                    "duplicate": orjson.dumps([visit("web", "v9"), {**one, "visitor_id": "v"}]),
                    "mixed": orjson.dumps([visit("web", "v10"), visit("nope", "v11")]),
                }.items()
            }
            async with session.get(url) as response:
                get_status = response.status
        published = await read(pipeline, "decisions", lambda d: len(d) >= 4)
    finally:
        assert worker.stop() == 0

    status, decision = single
    assert status == 200 and validate("decisions", decision) is None
    assert (decision["event_id"], decision["segment_key"]) == (
        one["event_id"],
        "device:mobile|source:instagram",
    )
    status, decisions = array
    assert status == 200 and [d["event_id"] for d in decisions] == [v["event_id"] for v in many]
    assert all(d["segment_key"] == "device:desktop|source:google" for d in decisions)
    assert retried[0] == 200 and retried[1]["decision_id"] == decision["decision_id"], (
        "a retried request is decided again, to the same decision"
    )
    assert empty == (200, [])
    expected = {
        "malformed": (400, "malformed_json"),
        "schema": (400, "schema_violation"),
        "unknown": (404, "unknown_experiment"),
        "stopped": (409, "experiment_not_running"),
        "oversized": (413, "oversized"),
        "too_large": (413, "oversized"),
        "duplicate": (409, "duplicate_event"),
        "mixed": (404, "unknown_experiment"),
    }
    assert {k: (s, body["reason"]) for k, (s, body) in refusals.items()} == expected
    assert all(body["detail"] for _, body in refusals.values())
    assert [e["index"] for e in refusals["mixed"][1]["errors"]] == [1]
    assert get_status == 405
    ids = sorted(d["event_id"] for d in published)
    sent = sorted([one["event_id"], one["event_id"], *(v["event_id"] for v in many)])
    assert ids == sent, "every answered decision was published (the retry again)"
