"""(a) One worker of the pipeline on a backlog produced before it starts.

Timed from the worker's readiness (or its first decision, if earlier) until every visit has
its decision on `decisions` and every exposure and conversion is counted in Postgres: the
throughput of the whole pipeline, decide and track stages together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from streams.bench.pipeline.environment import (
    Arrivals,
    background,
    counted_in_postgres,
    reading,
    scratch,
)
from streams.bench.pipeline.progress import BenchError, progress
from streams.bench.pipeline.traffic import Backlog, produce_backlog
from streams.bench.pipeline.workers import POLL_S, pipeline_worker, running
from streams.settings import Settings
from streams.topics import DECISIONS


@dataclass
class PipelineResult:
    visits: int
    events: int
    seconds: float
    decide_seconds: float
    track_seconds: float
    attributed: int
    produce_seconds: float
    ready_seconds: float

    @property
    def visits_per_s(self) -> float:
        return self.visits / self.seconds

    @property
    def eps(self) -> float:
        return self.events / self.seconds


def _all_counted(counts: tuple[int, int], backlog: Backlog) -> bool:
    """Whether Postgres counts the whole backlog; counting more than was produced is an error."""
    exposures, converted = counts
    if exposures > backlog.exposures or converted > backlog.conversions:
        msg = (
            f"Postgres counts more than was produced: {exposures} exposures of "
            f"{backlog.exposures}, {converted} conversions of {backlog.conversions}"
        )
        raise BenchError(msg)
    return exposures == backlog.exposures and converted == backlog.conversions


async def measure_pipeline(
    base: Settings, backlog: Backlog, workdir: Path, timeout: float
) -> PipelineResult:
    async with (
        scratch(base, "pipeline", database=True) as sc,
        contextlib.AsyncExitStack() as stack,
    ):
        assert sc.dsn is not None
        produced = await produce_backlog(sc.settings, backlog)
        progress(
            f"(a) backlog of {backlog.events:,} events produced in {produced:.1f} s; "
            "starting one worker"
        )
        reader = await stack.enter_async_context(reading(sc.settings, sc.topic(DECISIONS)))
        conn = await asyncpg.connect(sc.dsn)
        stack.push_async_callback(conn.close)
        decisions = Arrivals(backlog.visits, distinct=True)
        worker = stack.enter_context(running(pipeline_worker(sc, workdir, "pipeline")))
        t_launch = time.perf_counter()
        counter = await stack.enter_async_context(background(decisions.read(reader)))
        t_ready = await worker.ready_at()
        progress(f"(a) worker ready after {t_ready - t_launch:.1f} s; processing")
        deadline = t_ready + timeout
        counts = (0, 0)
        t_tracked: float | None = None
        last_report = time.perf_counter()
        while True:
            now = time.perf_counter()
            if t_tracked is None:
                counts = await counted_in_postgres(conn)
                if _all_counted(counts, backlog):
                    t_tracked = time.perf_counter()
            if t_tracked is not None and decisions.done is not None:
                break
            if counter.done() and counter.exception() is not None:
                msg = f"decisions reader failed: {counter.exception()!r}"
                raise BenchError(msg)
            worker.check_alive()
            if now > deadline:
                msg = (
                    f"(a) not done in {timeout:.0f} s: {decisions.count:,}/{backlog.visits:,}"
                    f" decisions, Postgres (exposures, conversions) = "
                    f"{counts}; log {worker.log}"
                )
                raise BenchError(msg)
            if now - last_report > 10:
                last_report = now
                progress(
                    f"(a) {decisions.count:,}/{backlog.visits:,} decisions, Postgres "
                    f"(exposures, conversions) = {counts}"
                )
            await asyncio.sleep(POLL_S)
    t_start = decisions.measured_from(t_ready)
    _, converted = counts
    return PipelineResult(
        visits=backlog.visits,
        events=backlog.events,
        seconds=max(decisions.done, t_tracked) - t_start,
        decide_seconds=decisions.done - t_start,
        track_seconds=t_tracked - t_start,
        attributed=converted,
        produce_seconds=produced,
        ready_seconds=t_ready - t_launch,
    )
