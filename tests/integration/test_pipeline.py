"""The pipeline end to end on the real broker and database, with worker subprocesses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import orjson
import pytest

from streams.settings import Settings
from tests.integration.pipeline import (
    DESKTOP_CHROME,
    Pipeline,
    conversion,
    create_experiment,
    exposure,
    prepare,
    produce,
    produce_docs,
    read,
    visit,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def pipeline(settings: Settings, tmp_path: Path, fresh_database: str) -> Pipeline:
    return await prepare(settings, tmp_path, fresh_database)


async def _counts(p: Pipeline, experiment_id: str) -> dict[tuple[str, str], tuple[int, int]]:
    conn = await asyncpg.connect(p.settings.database_dsn)
    try:
        rows = await conn.fetch(
            "SELECT segment_key, variant_id, exposures, conversions FROM variant_segment_state "
            "WHERE experiment_id = $1", experiment_id)
    finally:
        await conn.close()
    return {(r["segment_key"], r["variant_id"]): (r["exposures"], r["conversions"]) for r in rows}


async def test_visits_get_decisions_and_bad_input_goes_to_deadletter(pipeline: Pipeline) -> None:
    await create_experiment(pipeline, "exp1")
    worker = pipeline.worker().start()
    try:
        await asyncio.to_thread(worker.wait_http_ready)
        visits = [visit("exp1", f"visitor-{i}") for i in range(20)]
        await produce_docs(pipeline, "visits", visits)
        bad = [
            ("k1", b"{not json"),
            ("k2", b"\xff\xfe invalid utf-8"),
            ("k3", orjson.dumps({"event_id": "x"})),
            ("k4", orjson.dumps(visit("no-such-experiment", "v"))),
            ("k5", b"[1, 2]"),
            ("k6", b"{" + b" " * 70_000 + b"}"),
            ("k7", orjson.dumps({**visit("exp1", "v7"), "occurred_at": "2999-01-01T00:00:00Z"})),
            ("k8", orjson.dumps(visits[0])),  # the same event_id again
        ]
        await produce(pipeline, "visits", bad)
        decisions = await read(pipeline, "decisions", lambda d: len(d) >= 20)
        dead = await read(pipeline, "deadletter", lambda d: len(d) >= len(bad))
        assert worker.proc is not None and worker.proc.poll() is None, "the worker is still up"
    finally:
        assert worker.stop() == 0
    assert sorted(d["event_id"] for d in decisions) == sorted(v["event_id"] for v in visits)
    for d in decisions:
        assert d["segment_key"] == "device:mobile|source:instagram"
        assert d["source"] == "uniform" and abs(d["propensity"] - 1 / 3) < 1e-9
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == sorted([
        "malformed_json", "invalid_utf8", "schema_violation", "unknown_experiment",
        "not_an_object", "oversized", "future_timestamp", "duplicate_event",
    ])
    assert all(d["source_topic"] == pipeline.topic("visits") and d["detail"] for d in dead)
