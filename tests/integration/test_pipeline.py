"""The pipeline end to end on the real broker and database, with worker subprocesses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import orjson
import pytest

from streams.settings import Settings
from tests.integration.pipeline import (
    DESKTOP_CHROME,
    Pipeline,
    conversions_for,
    create_experiment,
    decisions_for,
    exposure,
    prepare,
    produce,
    produce_docs,
    read,
    synthetic_exposures,
    visit,
)

T = TypeVar("T")

pytestmark = pytest.mark.integration


@pytest.fixture
async def pipeline(settings: Settings, tmp_path: Path, fresh_database: str) -> Pipeline:
    return await prepare(settings, tmp_path, fresh_database)


async def _counts(p: Pipeline, experiment_id: str) -> dict[tuple[str, str], tuple[int, int]]:
    conn = await asyncpg.connect(p.settings.database_dsn)
    try:
        rows = await conn.fetch(
            "SELECT segment_key, variant_id, exposures, conversions FROM variant_segment_state "
            "WHERE experiment_id = $1",
            experiment_id,
        )
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
        counted = await _settled_metrics(
            lambda: {
                reason: _metric(worker.web_port, f'bandit_dead_letters_total{{reason="{reason}"}}')
                for reason in ("malformed_json", "oversized", "duplicate_event")
            },
            lambda c: min(c.values()) >= 1,
        )
    finally:
        assert worker.stop() == 0
    assert sorted(d["event_id"] for d in decisions) == sorted(v["event_id"] for v in visits)
    for d in decisions:
        assert d["segment_key"] == "device:mobile|source:instagram"
        assert d["source"] == "uniform" and abs(d["propensity"] - 1 / 3) < 1e-9
    reasons = sorted(d["reason"] for d in dead)
    assert reasons == sorted(
        [
            "malformed_json",
            "invalid_utf8",
            "schema_violation",
            "unknown_experiment",
            "not_an_object",
            "oversized",
            "future_timestamp",
            "duplicate_event",
        ]
    )
    assert all(d["source_topic"] == pipeline.topic("visits") and d["detail"] for d in dead)
    assert counted == {"malformed_json": 1.0, "oversized": 1.0, "duplicate_event": 1.0}


async def test_conversions_move_their_segment_and_sticky_visitors_keep_their_variant(
    pipeline: Pipeline,
) -> None:
    await create_experiment(
        pipeline, "learn", policy={"name": "segment", "min_samples_per_segment": 0}
    )
    mobile = "device:mobile|source:instagram"
    desktop = "device:desktop|source:google"
    worker = pipeline.worker().start()
    try:
        await asyncio.to_thread(worker.wait_http_ready)
        exposures = synthetic_exposures("learn", [mobile, desktop], ["a", "b", "c"], 600, seed=3)
        await produce_docs(pipeline, "decisions", decisions_for(exposures))
        await produce_docs(pipeline, "exposures", exposures)

        def latest(docs: list[dict], segment: str) -> dict | None:
            mine = [d for d in docs if d["segment_key"] == segment]
            return max(mine, key=lambda d: d["version"]) if mine else None

        def counted(docs: list[dict], segment: str, n: int) -> bool:
            doc = latest(docs, segment)
            return doc is not None and sum(doc["exposures"].values()) == n

        n_mobile = sum(e["segment_key"] == mobile for e in exposures)
        n_desktop = len(exposures) - n_mobile
        before = await read(
            pipeline,
            "allocations",
            lambda d: counted(d, mobile, n_mobile) and counted(d, desktop, n_desktop),
        )
        desktop_before = latest(before, desktop)
        assert desktop_before is not None

        winners = [e for e in exposures if e["segment_key"] == mobile and e["variant_id"] == "b"]
        await produce_docs(pipeline, "conversions", conversions_for(winners[:60]))
        after = await read(
            pipeline,
            "allocations",
            lambda d: (latest(d, mobile) or {}).get("conversions", {}).get("b") == 60,
        )

        # a sticky visitor: shown what was decided, comes back, keeps it
        first = visit("learn", "sticky-visitor", ua=DESKTOP_CHROME, utm_source="google")
        await produce_docs(pipeline, "visits", [first])

        def answers(visit_doc: dict) -> Callable[[list[dict]], bool]:
            return lambda docs: any(d["event_id"] == visit_doc["event_id"] for d in docs)

        decided = [
            d
            for d in await read(pipeline, "decisions", answers(first))
            if d["event_id"] == first["event_id"]
        ]
        await produce_docs(pipeline, "exposures", [exposure(decided[0])])
        await asyncio.sleep(1.5)
        again = visit("learn", "sticky-visitor", ua=DESKTOP_CHROME, utm_source="google")
        await produce_docs(pipeline, "visits", [again])
        decisions = await read(pipeline, "decisions", answers(again))
    finally:
        assert worker.stop() == 0
    mobile_after = latest(after, mobile)
    assert mobile_after is not None
    assert max(mobile_after["weights"], key=mobile_after["weights"].get) == "b"
    assert mobile_after["weights"]["b"] > 0.9, "60 conversions of 100 vs none: b is best"
    desktop_after = latest(after, desktop)
    assert desktop_after is not None and desktop_after["version"] > desktop_before["version"]
    assert desktop_after["conversions"] == desktop_before["conversions"], "desktop's counts kept"
    second = next(d for d in decisions if d["event_id"] == again["event_id"])
    shown = decided[0]["variant_id"]
    assert (second["variant_id"], second["source"], second["propensity"]) == (shown, "sticky", 1.0)


async def test_two_workers_split_partitions_and_each_replicates_every_allocation(
    pipeline: Pipeline,
) -> None:
    await create_experiment(pipeline, "pair")
    workers = [pipeline.worker("w1").start(), pipeline.worker("w2").start()]
    try:
        for w in workers:
            await asyncio.to_thread(w.wait_http_ready)
        await asyncio.sleep(3)  # let the group settle on two members before traffic
        visits = [visit("pair", f"visitor-{i}") for i in range(400)]
        await produce_docs(pipeline, "visits", visits)
        decisions = await read(pipeline, "decisions", lambda d: len(d) >= 400)
        await asyncio.sleep(1)
        decisions = await read(pipeline, "decisions", lambda d: len(d) > 400, timeout=2)
        exposures = synthetic_exposures(
            "pair",
            ["device:mobile|source:instagram", "device:desktop|source:google"],
            ["a", "b", "c"],
            300,
            seed=5,
        )
        await produce_docs(pipeline, "decisions", decisions_for(exposures))
        await produce_docs(pipeline, "exposures", exposures)
        allocations = await read(pipeline, "allocations", lambda d: len(d) >= 3)
        visits_in = 'bandit_events_in_total{topic="visits"}'
        decided = await _settled_metrics(
            lambda: [_metric(w.web_port, visits_in) for w in workers], lambda d: sum(d) >= 400
        )
        # the publisher goes on (heartbeats): compare each replica with the topic at one time,
        # polling until both caught up with what the topic held when they were read
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            published = len(await read(pipeline, "allocations", lambda d: False, timeout=1))
            seen = [
                _metric(w.web_port, 'bandit_replica_updates_total{replica="allocations"}')
                for w in workers
            ]
            if all(n >= published for n in seen) or loop.time() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0]
    assert sorted(d["event_id"] for d in decisions) == sorted(v["event_id"] for v in visits), (
        "exactly one decision per visit from the pair"
    )
    assert sum(decided) == 400 and min(decided) > 0, f"both workers decided visits: {decided}"
    assert published >= len(allocations) > 0
    assert min(seen) >= published, f"each worker applied every allocation record: {seen}"


async def _settled_metrics(read: Callable[[], T], enough: Callable[[T], bool]) -> T:
    """The metrics once `enough` holds, or after 30 s. A worker counts an effect just after it
    is visible (a dead letter is counted when the send that the test already read from the
    topic returns), so a single scrape would race it; more than expected still fails."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        values = await asyncio.to_thread(read)
        if enough(values) or asyncio.get_running_loop().time() > deadline:
            return values
        await asyncio.sleep(0.2)


def _metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0
