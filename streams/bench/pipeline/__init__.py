"""`bandit-stream bench pipeline`: the pipeline on the real broker, against two references.

All in one run, each measurement with its own fresh database (`bench_<token>`, migrated,
dropped at the end) and its own topics (prefix `bench<token>.`, deleted at the end):

(a) one worker (`python -m faust -A streams.app worker`) on a backlog: N visits, their
    exposures and ~5 % conversions, all produced before the worker starts; timed from the
    worker's readiness (or its first decision, if earlier) until every visit has its decision
    on `decisions` and every exposure and conversion is counted in Postgres (`backlog`).
(b) the same raw messages through a plain aiokafka consume→produce loop (consumer group,
    acks=all) and through a naive Faust app (`streams.bench.faust_reference`: a Table update
    and a `topic.send` per event), each in its own topics (`references`).
(c) visit→decision latency at a paced, bounded offered load against a running worker, with
    the client's exposures and ~5 % conversions flowing, read by a `read_uncommitted` and a
    `read_committed` reader of `decisions` in the same run (`latency`).
(d) the other ways to decide: in process with `streams.client.DecisionClient` (per-call
    time, cached and new user agents) and `POST /decide` at a paced, bounded request rate
    to the worker on 127.0.0.1 (`decide_paths`).

Kafka and Postgres that are not configured (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL) are
started locally for the run, and stopped after it unless `--keep-services`.

The machines this runs on are noisy: the ratios to the references measured in the same run
are the point, not the absolute figures. Run it as `bandit-stream bench pipeline [--json]`
or `python -m streams.bench.pipeline [--json]`; with `--json` stdout carries one JSON
object and nothing else (progress and the table go to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import asyncpg
import orjson

from streams.bench.pipeline.backlog import measure_pipeline
from streams.bench.pipeline.decide_paths import measure_decide_paths
from streams.bench.pipeline.environment import loopback_only
from streams.bench.pipeline.latency import measure_latency
from streams.bench.pipeline.options import Options, add_arguments
from streams.bench.pipeline.progress import BenchError, notes, progress
from streams.bench.pipeline.references import measure_faust_reference, measure_plain_loop
from streams.bench.pipeline.report import Report
from streams.bench.pipeline.traffic import make_backlog
from streams.errors import ServiceError
from streams.services import local
from streams.settings import Settings

__all__ = ["add_arguments", "main"]


async def run(base: Settings, opts: Options) -> Report:
    """(a), (b) unless skipped, (c), (d); the worker logs are kept if anything was noted."""
    loopback_only(base.bootstrap_servers)
    notes.clear()
    workdir = Path(tempfile.mkdtemp(prefix="bandit-bench-"))
    ok = False
    try:
        backlog = make_backlog(opts.visits)
        progress(
            f"backlog: {backlog.visits:,} visits, {backlog.exposures:,} exposures, "
            f"{backlog.conversions:,} conversions; logs in {workdir}"
        )
        budget = 60 + backlog.events / 500
        pipeline = await measure_pipeline(base, backlog, workdir, timeout=budget)
        progress(
            f"(a) pipeline: {pipeline.visits_per_s:,.0f} visits/s, {pipeline.eps:,.0f} events/s"
        )
        plain = faust = None
        if not opts.skip_references:
            plain = await measure_plain_loop(base, backlog, timeout=budget)
            progress(f"(b) plain aiokafka loop: {plain.eps:,.0f} events/s")
            faust = await measure_faust_reference(base, backlog, workdir, timeout=budget)
            progress(f"(b) naive faust reference: {faust.eps:,.0f} events/s")
        latency = await measure_latency(base, opts, workdir, drain_timeout=20 + opts.duration)
        client, http = await measure_decide_paths(base, opts, workdir)
        c, h = client.cached(), http.percentiles()
        progress(
            f"(d) client p50/p99 {c['p50']:.1f}/{c['p99']:.1f} µs; POST /decide p50/p99 "
            f"{h['p50']:.2f}/{h['p99']:.2f} ms at {http.requests_per_s:,.0f} requests/s"
        )
        report = Report(
            base, opts, backlog, pipeline, plain, faust, latency, list(notes), client, http
        )
        ok = not notes
        return report
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"worker logs kept in {workdir}")


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # the load generator and readers then share asyncio's loop
        return None
    return uvloop.new_event_loop


@contextlib.contextmanager
def _services(base: Settings, keep: bool) -> Iterator[None]:
    """Kafka and Postgres reachable: the configured ones, else local ones started here."""
    if base.kafka_configured and base.database_configured:
        yield
        return
    endpoints = local.up(base)
    progress(
        "local services (127.0.0.1) for what is not configured: "
        + ", ".join(
            f"{name} {'configured' if configured else 'started' if started else 'already running'}"
            for name, configured, started in (
                ("kafka", base.kafka_configured, endpoints.started_kafka),
                ("postgres", base.database_configured, endpoints.started_postgres),
            )
        )
    )
    try:
        yield
    finally:
        if keep:
            progress("local services left running (--keep-services)")
        else:
            stopped = local.down(base, endpoints.started_kafka, endpoints.started_postgres)
            progress(f"stopped {', '.join(stopped)}" if stopped else "services left as they were")


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = out or sys.stdout
    try:
        opts = Options.from_args(args)
        base = Settings()
        # fresh topics log NotLeaderForPartition once or twice; real failures raise anyway
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        with (
            _services(base, opts.keep_services),
            asyncio.Runner(loop_factory=_event_loop_factory()) as runner,
        ):
            report = runner.run(run(base, opts))
    except (BenchError, ServiceError) as exc:
        print(f"bench pipeline: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(
            f"bench pipeline: a service did not answer ({exc!r}); are Kafka and Postgres "
            "running? (`bandit-stream services up`)",
            file=sys.stderr,
        )
        return 1
    table = report.table()
    if opts.json:
        print(table, file=sys.stderr)
        stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
    else:
        stdout.write(table + "\n")
    stdout.flush()
    return 0
