"""A worker stopped or killed mid-stream and restarted loses nothing and counts nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from streams.settings import Settings
from tests.integration.pipeline import (
    Pipeline,
    conversions_for,
    create_experiment,
    decisions_for,
    prepare,
    produce_docs,
    synthetic_exposures,
)

pytestmark = pytest.mark.integration
SEGMENTS = ["device:mobile|source:instagram", "device:desktop|source:google"]


@pytest.fixture
async def pipeline(settings: Settings, tmp_path: Path, fresh_database: str) -> Pipeline:
    return await prepare(settings, tmp_path, fresh_database)


Counts = dict[tuple[str, str], list[int]]


async def _counts(p: Pipeline) -> Counts:
    """{(segment, variant): [exposures, conversions]} as Postgres has them now."""
    conn = await asyncpg.connect(p.settings.database_dsn)
    try:
        rows = await conn.fetch(
            "SELECT segment_key, variant_id, exposures, conversions FROM variant_segment_state"
        )
    finally:
        await conn.close()
    return {(r["segment_key"], r["variant_id"]): [r["exposures"], r["conversions"]] for r in rows}


async def _tracked(p: Pipeline) -> int:
    """Records the track stage applied so far (its offsets of record, in Postgres)."""
    conn = await asyncpg.connect(p.settings.database_dsn)
    try:
        value = await conn.fetchval(
            "SELECT coalesce(sum(last_offset + 1), 0) FROM consumer_watermarks "
            "WHERE stage = 'track'"
        )
    finally:
        await conn.close()
    return int(value)


def _totals(counts: Counts) -> tuple[int, int]:
    return sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())


async def _wait_for(
    p: Pipeline, done: Callable[[tuple[int, int]], bool], timeout: float = 120
) -> Counts:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    counts = await _counts(p)
    while not done(_totals(counts)) and loop.time() < deadline:
        await asyncio.sleep(0.05)
        counts = await _counts(p)
    return counts


@pytest.mark.parametrize("stop", ["sigterm", "kill9"])
async def test_restart_mid_stream_leaves_counts_exact(pipeline: Pipeline, stop: str) -> None:
    await create_experiment(pipeline, "exact")
    exposures = synthetic_exposures("exact", SEGMENTS, ["a", "b", "c"], 6000, seed=7)
    converted = exposures[::10]
    # exposures and conversions first: they wait for their decisions, which come last
    await produce_docs(pipeline, "exposures", exposures)
    await produce_docs(pipeline, "conversions", conversions_for(converted))
    await produce_docs(pipeline, "decisions", decisions_for(exposures))
    expected: dict[tuple[str, str], list[int]] = {}
    for e in exposures:
        expected.setdefault((e["segment_key"], e["variant_id"]), [0, 0])[0] += 1
    for e in converted:
        expected[(e["segment_key"], e["variant_id"])][1] += 1

    records = len(exposures) * 2 + len(converted)  # decisions, exposures, conversions
    first = pipeline.worker("first").start()
    try:
        await asyncio.to_thread(first.wait_http_ready)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while await _tracked(pipeline) == 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)  # stop as soon as the track stage committed a batch
    finally:
        if stop == "sigterm":
            assert first.stop() == 0
        else:
            first.kill()
    tracked = await _tracked(pipeline)
    assert 0 < tracked < records, f"stopped mid-stream: {tracked} of {records} records applied"

    second = pipeline.worker("second").start()
    try:
        await asyncio.to_thread(second.wait_http_ready)
        await _wait_for(pipeline, lambda t: t == (6000, 600))
        await asyncio.sleep(2)  # anything replayed twice would show up now
        final = await _counts(pipeline)
    finally:
        assert second.stop() == 0
    assert _totals(final) == (6000, 600), second.log_text()[-3000:]
    assert final == expected, "every (segment, variant) exact, not just the totals"
    conn = await asyncpg.connect(pipeline.settings.database_dsn)
    try:
        rows = await conn.fetch("SELECT segment_key, exposures, conversions FROM context_segments")
    finally:
        await conn.close()
    per_segment: dict[str, list[int]] = {}
    for (segment, _), (n, c) in expected.items():
        per_segment.setdefault(segment, [0, 0])
        per_segment[segment][0] += n
        per_segment[segment][1] += c
    assert {r["segment_key"]: [r["exposures"], r["conversions"]] for r in rows} == per_segment, (
        "context_segments keeps each segment's totals in step (update_segment_stats)"
    )
