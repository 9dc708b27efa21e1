"""`bandit-stream bench pipeline`: the pipeline on the real broker, against two references.

All in one run, each measurement with its own fresh database (`bench_<token>`, migrated,
dropped at the end) and its own topics (prefix `bench<token>.`, deleted at the end):

(a) one worker (`python -m faust -A streams.app worker`) on a backlog: N visits, their
    exposures and ~5 % conversions, all produced before the worker starts; timed from the
    worker's readiness (or its first decision, if earlier) until every visit has its decision
    on `decisions` and every exposure and conversion is counted in Postgres.
(b) the same raw messages through a plain aiokafka consume→produce loop (consumer group,
    acks=all) and through a naive Faust app (`streams.bench.faust_reference`: a Table update
    and a `topic.send` per event), each in its own topics.
(c) visit→decision latency at a paced, bounded offered load against a running worker, with
    the client's exposures and ~5 % conversions flowing, read by a `read_uncommitted` and a
    `read_committed` reader of `decisions` in the same run.

The machines this runs on are noisy: the ratios to the references measured in the same run
are the point, not the absolute figures. Run it as `bandit-stream bench pipeline [--json]`
or `python -m streams.bench.pipeline [--json]`; with `--json` stdout carries one JSON
object and nothing else (progress and the table go to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from streams.admin import ensure_topics
from streams.contracts import format_timestamp
from streams.core.context import extract_context
from streams.core.segments import segment_key
from streams.experiments import new_experiment_document
from streams.pipeline.decide import decision_id
from streams.settings import Settings
from streams.sink.experiments import save_experiment
from streams.sink.migrations import migrate
from streams.topics import CONVERSIONS, DECISIONS, EXPOSURES, VISITS, topic_name

EXPERIMENT_ID = "bench-pipeline"
VARIANTS = ("a", "b", "c")
CONTEXT_FEATURES = ("device", "source")
CONVERSION_SHARE = 0.05
INPUTS = (VISITS, EXPOSURES, CONVERSIONS)

USER_AGENTS = (
    # iPhone, Instagram's in-app browser
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.18.84",
    # Android, Chrome
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
    # Windows, Chrome
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    # Mac, Safari
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
)
UTM_SOURCES = ("instagram", "google", "facebook", None)
COUNTRIES = (("US", "en-US"), ("GB", "en-GB"), ("DE", "de-DE"), ("FR", "fr-FR"), ("BR", "pt-BR"))

WORKER_READY_TIMEOUT_S = 90.0
WORKER_STOP_TIMEOUT_S = 20.0
POLL_S = 0.05


class BenchError(RuntimeError):
    """The benchmark could not measure (a service is missing, a worker died, a timeout)."""


# --- progress ---------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[bench pipeline {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


_notes: list[str] = []


def _note(message: str) -> None:
    """Something the reader of the table must know (shown under it; logs are kept)."""
    _notes.append(message)
    _progress(f"NOTE: {message}")


# --- options ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--visits",
        type=int,
        default=30_000,
        help="visits of the backlog (each with an exposure, ~5%% with a conversion)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=2_000.0,
        help="offered visits/s of the latency measurement",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="seconds of offered load of the latency measurement",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (progress and table on stderr)",
    )
    parser.add_argument(
        "--skip-references",
        action="store_true",
        help="skip the plain aiokafka loop and the naive faust app (quick runs)",
    )


@dataclass(frozen=True)
class Options:
    visits: int
    rate: float
    duration: float
    json: bool
    skip_references: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        opts = cls(
            visits=int(args.visits),
            rate=float(args.rate),
            duration=float(args.duration),
            json=bool(args.json),
            skip_references=bool(args.skip_references),
        )
        if opts.visits < 20:
            msg = "--visits must be at least 20"
            raise BenchError(msg)
        if not (0 < opts.rate <= 50_000) or not (0.5 <= opts.duration <= 600):
            msg = "--rate must be in (0, 50000] visits/s and --duration in [0.5, 600] s"
            raise BenchError(msg)
        if opts.rate * opts.duration < 20:
            msg = "--rate × --duration must offer at least 20 visits"
            raise BenchError(msg)
        return opts


# --- messages ---------------------------------------------------------------------------

Record = tuple[bytes, bytes]  # key, value


def _context(rng: random.Random) -> dict[str, Any]:
    country, language = rng.choice(COUNTRIES)
    ctx: dict[str, Any] = {
        "user_agent": rng.choice(USER_AGENTS),
        "country": country,
        "language": language,
    }
    source = rng.choice(UTM_SOURCES)
    if source is not None:
        ctx["utm_source"] = source
        ctx["utm_medium"] = "paid" if source == "google" else "social"
    return ctx


def _segment(ctx: dict[str, Any], occurred_at: datetime) -> str:
    return segment_key(extract_context(ctx, occurred_at), CONTEXT_FEATURES)


@dataclass(frozen=True)
class Backlog:
    """The raw messages of the backlog, per input topic, in production order."""

    records: dict[str, list[Record]]

    @property
    def visits(self) -> int:
        return len(self.records[VISITS])

    @property
    def exposures(self) -> int:
        return len(self.records[EXPOSURES])

    @property
    def conversions(self) -> int:
        return len(self.records[CONVERSIONS])

    @property
    def events(self) -> int:
        return self.visits + self.exposures + self.conversions


def make_backlog(visits: int, seed: int = 7) -> Backlog:
    """N visits of N visitors, an exposure each, ~5 % converting (a minute later)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    start = datetime.now(UTC) - timedelta(minutes=15)
    out: dict[str, list[Record]] = {VISITS: [], EXPOSURES: [], CONVERSIONS: []}
    converting = set(rng.sample(range(visits), max(1, round(visits * CONVERSION_SHARE))))
    for i in range(visits):
        visitor = f"visitor-{run}-{i}"
        key = visitor.encode()
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        at = start + timedelta(milliseconds=10 * i)
        ctx = _context(rng)
        out[VISITS].append(
            (
                key,
                orjson.dumps(
                    {
                        "event_id": event_id,
                        "experiment_id": EXPERIMENT_ID,
                        "visitor_id": visitor,
                        "occurred_at": format_timestamp(at),
                        "context": ctx,
                    }
                ),
            )
        )
        exposed_at = at + timedelta(milliseconds=300)
        out[EXPOSURES].append(
            (
                key,
                orjson.dumps(
                    {
                        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                        "experiment_id": EXPERIMENT_ID,
                        "visitor_id": visitor,
                        "variant_id": rng.choice(VARIANTS),
                        "decision_id": decision_id(EXPERIMENT_ID, event_id),
                        "segment_key": _segment(ctx, at),
                        "occurred_at": format_timestamp(exposed_at),
                    }
                ),
            )
        )
        if i in converting:
            out[CONVERSIONS].append(
                (
                    key,
                    orjson.dumps(
                        {
                            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                            "experiment_id": EXPERIMENT_ID,
                            "visitor_id": visitor,
                            "occurred_at": format_timestamp(exposed_at + timedelta(seconds=60)),
                            "value": round(rng.uniform(5, 120), 2),
                        }
                    ),
                )
            )
    return Backlog(out)


# --- services: loopback only, scratch databases and topics ------------------------------


def _loopback_only(bootstrap_servers: str) -> None:
    """The offered load stays on this machine: every bootstrap server must be loopback."""
    for server in bootstrap_servers.split(","):
        host = server.strip().rsplit(":", 1)[0].strip("[]")
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError as exc:
            msg = f"cannot resolve Kafka bootstrap server {server!r}: {exc}"
            raise BenchError(msg) from exc
        for address in addresses:
            if not ipaddress.ip_address(str(address).split("%", 1)[0]).is_loopback:
                msg = (
                    f"Kafka bootstrap server {server!r} resolves to {address}, not loopback: "
                    "this benchmark offers load only to a broker on this machine"
                )
                raise BenchError(msg)


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def _admin_sql(dsn: str, sql: str) -> None:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError):
        conn = await asyncpg.connect(_with_database(dsn, "postgres"), timeout=10)
    try:
        await conn.execute(sql, timeout=60)
    finally:
        await conn.close()


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if names:
            await admin.delete_topics(names, timeout_ms=20_000)
    finally:
        await admin.close()


@dataclass(frozen=True)
class Scratch:
    """The topics (and database) of one measurement."""

    token: str
    settings: Settings
    dsn: str | None

    @property
    def prefix(self) -> str:
        return self.settings.topic_prefix

    def topic(self, base: str) -> str:
        return topic_name(self.settings, base)


@contextlib.asynccontextmanager
async def scratch(base: Settings, label: str, *, database: bool) -> AsyncIterator[Scratch]:
    """Fresh topics (and a fresh migrated database), removed on the way out."""
    token = uuid.uuid4().hex[:10]
    prefix = f"bench{token}."
    server_dsn = base.database_dsn
    name = f"bench_{token}"
    created = False
    settings = base.model_copy(update={"topic_prefix": prefix, "app_id": f"{prefix}{label}"})
    dsn: str | None = None
    try:
        if database:
            await _admin_sql(server_dsn, f'CREATE DATABASE "{name}"')
            created = True
            dsn = _with_database(server_dsn, name)
            await migrate(dsn)
            settings = settings.model_copy(update={"database_url": SecretStr(dsn)})
        await asyncio.wait_for(ensure_topics(settings), 60)
        yield Scratch(token, settings, dsn)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_delete_topics(base.bootstrap_servers, prefix), 30)
        if created:
            try:
                await _admin_sql(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # reported, never hides the measurement's own error
                _progress(f"could not drop database {name}: {exc}")


async def _create_experiment(settings: Settings) -> None:
    doc = new_experiment_document(
        EXPERIMENT_ID, list(VARIANTS), context_features=list(CONTEXT_FEATURES)
    )
    await save_experiment(settings, doc)


async def produce_backlog(sc: Scratch, backlog: Backlog) -> float:
    """Every record acknowledged (acks=all), visits then exposures then conversions."""
    t0 = time.perf_counter()
    producer = AIOKafkaProducer(
        bootstrap_servers=sc.settings.bootstrap_servers,
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        for base in INPUTS:
            topic = sc.topic(base)
            futures = [
                await producer.send(topic, value, key=key) for key, value in backlog.records[base]
            ]
            await asyncio.wait_for(asyncio.gather(*futures), 120)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


def _reader(settings: Settings, isolation_level: str = "read_uncommitted") -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
        # aiokafka keeps one fetch in flight per broker: a partition drained meanwhile waits
        # for it, so the readers' own wait bounds what they add to a measured latency
        fetch_max_wait_ms=10,
    )


async def _start_reader(reader: AIOKafkaConsumer, topic: str, partitions: int) -> None:
    await reader.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    reader.assign(tps)
    await reader.seek_to_beginning(*tps)


# --- worker subprocesses ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _http_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 2)
        return int(line.split()[1])
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class Worker:
    """One `python -m faust -A <app> worker` subprocess; its log goes to a file."""

    def __init__(self, app: str, env: dict[str, str], workdir: Path, name: str) -> None:
        self.app = app
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.workdir = workdir
        self.log = workdir / f"{name}.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "faust",
            "--loop",
            "uvloop",
            "-A",
            self.app,
            "worker",
            "-l",
            "info",
            "--web-port",
            str(self.port),
            "--web-host",
            "127.0.0.1",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-chars:]

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            msg = f"worker {self.app} exited ({self.proc.returncode}); log {self.log}:\n"
            raise BenchError(msg + self.tail())

    async def wait_ready(self, timeout: float = WORKER_READY_TIMEOUT_S) -> float:
        """perf_counter() when `GET /ready` first answered 200."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self.check_alive()
            if await _http_status(self.port, "/ready") == 200:
                return time.perf_counter()
            await asyncio.sleep(POLL_S)
        msg = f"worker {self.app} not ready in {timeout:.0f} s; log {self.log}:\n"
        raise BenchError(msg + self.tail())

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _note(
                f"worker {self.app} ignored SIGTERM for {WORKER_STOP_TIMEOUT_S:.0f} s and was "
                f"killed; log {self.log}"
            )
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def _pipeline_env(sc: Scratch) -> dict[str, str]:
    s = sc.settings
    assert sc.dsn is not None
    return {
        "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "DATABASE_URL": sc.dsn,
        "BANDIT_TOPIC_PREFIX": s.topic_prefix,
        "BANDIT_APP_ID": s.app_id,
        "BANDIT_PARTITIONS": str(s.partitions),
        "BANDIT_PROCESSING_GUARANTEE": s.processing_guarantee,
        "BANDIT_COMMIT_INTERVAL_S": str(s.commit_interval_s),
    }


# --- (a) the pipeline on a backlog ------------------------------------------------------


@dataclass
class PipelineResult:
    visits: int
    events: int
    seconds: float
    decide_seconds: float
    track_seconds: float
    attributed: int
    unattributed: int
    produce_seconds: float
    ready_seconds: float

    @property
    def visits_per_s(self) -> float:
        return self.visits / self.seconds

    @property
    def eps(self) -> float:
        return self.events / self.seconds


async def _count_decisions(
    reader: AIOKafkaConsumer,
    expected: int,
    done: asyncio.Event,
    seen: set[str],
    marks: dict[str, float],
) -> None:
    while len(seen) < expected:
        batch = await reader.getmany(timeout_ms=100)
        now = time.perf_counter()
        for records in batch.values():
            for record in records:
                marks.setdefault("first", now)
                seen.add(orjson.loads(record.value or b"{}").get("event_id", ""))
    marks["done"] = time.perf_counter()
    done.set()


async def _state_counts(conn: asyncpg.Connection) -> tuple[int, int, int]:
    """(exposures, conversions, conversions refused for good) counted in Postgres.

    Conversions read before their exposure either wait in `pending_conversions` (counted
    once their exposure arrives) or, with the older schema, were counted for good in
    `unattributed_conversions`: the latter are "accounted for", the former not yet.
    """
    row = await conn.fetchrow(
        "SELECT coalesce(sum(exposures), 0)::bigint AS e, "
        "coalesce(sum(conversions), 0)::bigint AS c FROM variant_segment_state"
    )
    assert row is not None
    refused = 0
    if await conn.fetchval("SELECT to_regclass('unattributed_conversions') IS NOT NULL"):
        refused = await conn.fetchval(
            "SELECT coalesce(sum(conversions), 0)::bigint FROM unattributed_conversions"
        )
    return int(row["e"]), int(row["c"]), int(refused)


async def measure_pipeline(
    base: Settings, backlog: Backlog, workdir: Path, timeout: float
) -> PipelineResult:
    async with scratch(base, "pipeline", database=True) as sc:
        assert sc.dsn is not None
        await _create_experiment(sc.settings)
        produced = await produce_backlog(sc, backlog)
        _progress(
            f"(a) backlog of {backlog.events:,} events produced in {produced:.1f} s; "
            "starting one worker"
        )
        decisions = sc.topic(DECISIONS)
        reader = _reader(sc.settings)
        await _start_reader(reader, decisions, sc.settings.partitions)
        conn = await asyncpg.connect(sc.dsn)
        seen: set[str] = set()
        marks: dict[str, float] = {}
        decided = asyncio.Event()
        worker = Worker("streams.app", _pipeline_env(sc), workdir, f"pipeline-{sc.token}")
        counter: asyncio.Task[None] | None = None
        try:
            with running(worker):
                t_launch = time.perf_counter()
                counter = asyncio.create_task(
                    _count_decisions(reader, backlog.visits, decided, seen, marks)
                )
                t_ready = await worker.wait_ready()
                _progress(f"(a) worker ready after {t_ready - t_launch:.1f} s; processing")
                deadline = t_ready + timeout
                counts = (0, 0, 0)
                t_tracked: float | None = None
                last_report = time.perf_counter()
                while True:
                    now = time.perf_counter()
                    if t_tracked is None:
                        counts = await _state_counts(conn)
                        exposures, converted, lost = counts
                        if exposures > backlog.exposures or converted + lost > backlog.conversions:
                            msg = (
                                f"Postgres counts more than was produced: {exposures} "
                                f"exposures of {backlog.exposures}, {converted}+{lost} "
                                f"conversions of {backlog.conversions}"
                            )
                            raise BenchError(msg)
                        if (
                            exposures == backlog.exposures
                            and converted + lost == backlog.conversions
                        ):
                            t_tracked = time.perf_counter()
                    if t_tracked is not None and decided.is_set():
                        break
                    if counter.done() and counter.exception() is not None:
                        msg = f"decisions reader failed: {counter.exception()!r}"
                        raise BenchError(msg)
                    worker.check_alive()
                    if now > deadline:
                        msg = (
                            f"(a) not done in {timeout:.0f} s: {len(seen):,}/{backlog.visits:,}"
                            f" decisions, Postgres (exposures, conversions, refused) = "
                            f"{counts}; log {worker.log}"
                        )
                        raise BenchError(msg)
                    if now - last_report > 10:
                        last_report = now
                        _progress(
                            f"(a) {len(seen):,}/{backlog.visits:,} decisions, Postgres "
                            f"(exposures, conversions, refused) = {counts}"
                        )
                    await asyncio.sleep(POLL_S)
        finally:
            if counter is not None:
                counter.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await counter
            await reader.stop()
            await conn.close()
        t_start = min(t_ready, marks.get("first", t_ready))
        exposures, converted, lost = counts
        return PipelineResult(
            visits=backlog.visits,
            events=backlog.events,
            seconds=max(marks["done"], t_tracked) - t_start,
            decide_seconds=marks["done"] - t_start,
            track_seconds=t_tracked - t_start,
            attributed=converted,
            unattributed=lost,
            produce_seconds=produced,
            ready_seconds=t_ready - t_launch,
        )


# --- (b) the references -----------------------------------------------------------------


@dataclass
class ReferenceResult:
    events: int
    seconds: float

    @property
    def eps(self) -> float:
        return self.events / self.seconds


async def measure_plain_loop(base: Settings, backlog: Backlog, timeout: float) -> ReferenceResult:
    """A consumer group reading the 3 inputs, one output per input (acks=all), commit per batch."""
    async with scratch(base, "plain", database=False) as sc:
        await produce_backlog(sc, backlog)
        output = sc.topic(DECISIONS)
        consumer = AIOKafkaConsumer(
            *(sc.topic(b) for b in INPUTS),
            bootstrap_servers=sc.settings.bootstrap_servers,
            group_id=f"{sc.prefix}plain",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=sc.settings.bootstrap_servers, acks="all", linger_ms=0
        )
        await consumer.start()
        await producer.start()
        try:
            done = 0
            t_first: float | None = None
            deadline = time.perf_counter() + timeout
            while done < backlog.events:
                if time.perf_counter() > deadline:
                    msg = f"plain loop: {done:,}/{backlog.events:,} events in {timeout:.0f} s"
                    raise BenchError(msg)
                batch = await consumer.getmany(timeout_ms=200)
                if not batch:
                    continue
                if t_first is None:
                    t_first = time.perf_counter()
                futures = [
                    await producer.send(output, record.value, key=record.key)
                    for records in batch.values()
                    for record in records
                ]
                await asyncio.gather(*futures)
                await consumer.commit()
                done += len(futures)
            t_end = time.perf_counter()
        finally:
            await consumer.stop()
            await producer.stop()
        assert t_first is not None
        return ReferenceResult(done, t_end - t_first)


async def _count_records(reader: AIOKafkaConsumer, expected: int, marks: dict[str, float]) -> None:
    count = 0
    while count < expected:
        batch = await reader.getmany(timeout_ms=100)
        now = time.perf_counter()
        for records in batch.values():
            if records:
                marks.setdefault("first", now)
            count += len(records)
        marks["count"] = count
    marks["done"] = time.perf_counter()


async def measure_faust_reference(
    base: Settings, backlog: Backlog, workdir: Path, timeout: float
) -> ReferenceResult:
    async with scratch(base, "faust-reference", database=False) as sc:
        await produce_backlog(sc, backlog)
        output = sc.topic(DECISIONS)
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": sc.settings.bootstrap_servers,
            "BENCH_REF_APP_ID": sc.settings.app_id,
            "BENCH_REF_INPUTS": ",".join(sc.topic(b) for b in INPUTS),
            "BENCH_REF_OUTPUT": output,
            "BENCH_REF_PARTITIONS": str(sc.settings.partitions),
            "BENCH_REF_PROCESSING_GUARANTEE": sc.settings.processing_guarantee,
            "BENCH_REF_COMMIT_INTERVAL_S": str(sc.settings.commit_interval_s),
        }
        reader = _reader(sc.settings)
        await _start_reader(reader, output, sc.settings.partitions)
        worker = Worker("streams.bench.faust_reference", env, workdir, f"faust-ref-{sc.token}")
        marks: dict[str, float] = {}
        counter = asyncio.create_task(_count_records(reader, backlog.events, marks))
        try:
            with running(worker):
                t_ready = await worker.wait_ready()
                deadline = t_ready + timeout
                while not counter.done():
                    worker.check_alive()
                    if time.perf_counter() > deadline:
                        msg = (
                            f"faust reference: {int(marks.get('count', 0)):,}/"
                            f"{backlog.events:,} outputs in {timeout:.0f} s; log {worker.log}"
                        )
                        raise BenchError(msg)
                    await asyncio.sleep(POLL_S)
                await counter
        finally:
            counter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await counter
            await reader.stop()
        t_start = min(t_ready, marks.get("first", t_ready))
        return ReferenceResult(backlog.events, marks["done"] - t_start)


# --- (c) latency at a fixed offered load -----------------------------------------------


@dataclass
class LatencyResult:
    offered_per_s: float
    sent: int
    measured: int
    warmup_s: float
    max_sender_lag_ms: float
    exposures: int
    conversions: int
    tracked_exposures: int
    tracked_conversions: int
    decided_per_s: float
    samples: dict[str, list[float]] = field(default_factory=dict)  # isolation → ms

    def percentiles(self, reader: str) -> dict[str, float]:
        data = self.samples[reader]
        if len(data) < 2:
            msg = f"{reader}: only {len(data)} latency samples"
            raise BenchError(msg)
        cuts = statistics.quantiles(data, n=100, method="inclusive")
        return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


READERS = {"uncommitted": "read_uncommitted", "committed": "read_committed"}


async def _wait_tracked(
    dsn: str, exposures: int, conversions: int, timeout: float
) -> tuple[int, int]:
    """Postgres counts once they match what the client sent, or when `timeout` is over."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.perf_counter() + timeout
        while True:
            counted, converted, _ = await _state_counts(conn)
            if (counted, converted) == (exposures, conversions):
                return counted, converted
            if time.perf_counter() > deadline:
                _note(
                    f"(c) the track stage did not keep up: Postgres counts {counted:,}/"
                    f"{exposures:,} exposures and {converted:,}/{conversions:,} conversions "
                    f"{timeout:.0f} s after the load ended"
                )
                return counted, converted
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


class LoadClient:
    """A web back end: sends visits, reads decisions, sends exposures and some conversions."""

    def __init__(self, sc: Scratch, producer: AIOKafkaProducer, warmup_until: float) -> None:
        self.sc = sc
        self.producer = producer
        self.warmup_until = warmup_until
        self.rng = random.Random(11)
        self.run = uuid.uuid4().hex[:8]
        self.sent_at: dict[str, tuple[float, bool]] = {}  # event_id → (sent, measured)
        self.samples: dict[str, list[float]] = {name: [] for name in READERS}
        self.seen: dict[str, set[str]] = {name: set() for name in READERS}
        self.pending: list[asyncio.Future[Any]] = []
        self.conversions: deque[tuple[float, bytes, str]] = deque()
        self.exposures_sent = 0
        self.conversions_sent = 0
        self.first_decided: float | None = None  # when the uncommitted reader read them
        self.last_decided = 0.0

    async def send_visit(self, i: int) -> None:
        visitor = f"visitor-{self.run}-{i}"
        event_id = str(uuid.uuid4())
        value = orjson.dumps(
            {
                "event_id": event_id,
                "experiment_id": EXPERIMENT_ID,
                "visitor_id": visitor,
                "occurred_at": format_timestamp(datetime.now(UTC)),
                "context": _context(self.rng),
            }
        )
        now = time.perf_counter()
        self.sent_at[event_id] = (now, now >= self.warmup_until)
        self.pending.append(
            await self.producer.send(self.sc.topic(VISITS), value, key=visitor.encode())
        )

    async def on_decisions(self, reader: str, docs: list[dict[str, Any]], now: float) -> None:
        seen = self.seen[reader]
        for doc in docs:
            event_id = str(doc.get("event_id"))
            sent = self.sent_at.get(event_id)
            if sent is None or event_id in seen:
                continue
            seen.add(event_id)
            if sent[1]:
                self.samples[reader].append((now - sent[0]) * 1000)
            if reader == "uncommitted":
                if self.first_decided is None:
                    self.first_decided = now
                self.last_decided = now
                await self._expose(doc)

    async def _expose(self, decision: dict[str, Any]) -> None:
        visitor = str(decision["visitor_id"])
        stamp = datetime.now(UTC)
        self.pending.append(
            await self.producer.send(
                self.sc.topic(EXPOSURES),
                orjson.dumps(
                    {
                        "event_id": str(uuid.uuid4()),
                        "experiment_id": EXPERIMENT_ID,
                        "visitor_id": visitor,
                        "variant_id": decision["variant_id"],
                        "decision_id": decision["decision_id"],
                        "segment_key": decision["segment_key"],
                        "occurred_at": format_timestamp(stamp),
                    }
                ),
                key=visitor.encode(),
            )
        )
        self.exposures_sent += 1
        if self.rng.random() < CONVERSION_SHARE:
            self.conversions.append((time.perf_counter() + 0.5, visitor.encode(), visitor))

    async def send_due_conversions(self, flush: bool = False) -> None:
        now = time.perf_counter()
        while self.conversions and (flush or self.conversions[0][0] <= now):
            _, key, visitor = self.conversions.popleft()
            self.pending.append(
                await self.producer.send(
                    self.sc.topic(CONVERSIONS),
                    orjson.dumps(
                        {
                            "event_id": str(uuid.uuid4()),
                            "experiment_id": EXPERIMENT_ID,
                            "visitor_id": visitor,
                            "occurred_at": format_timestamp(datetime.now(UTC)),
                            "value": 25.0,
                        }
                    ),
                    key=key,
                )
            )
            self.conversions_sent += 1

    def complete(self) -> bool:
        return all(len(s) >= len(self.sent_at) for s in self.seen.values())


async def _read_decisions(
    client: LoadClient, reader_name: str, consumer: AIOKafkaConsumer, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=50)
        now = time.perf_counter()
        docs = [orjson.loads(r.value or b"{}") for records in batch.values() for r in records]
        if docs:
            await client.on_decisions(reader_name, docs, now)


async def measure_latency(
    base: Settings, opts: Options, workdir: Path, drain_timeout: float
) -> LatencyResult:
    async with scratch(base, "latency", database=True) as sc:
        await _create_experiment(sc.settings)
        worker = Worker("streams.app", _pipeline_env(sc), workdir, f"latency-{sc.token}")
        decisions = sc.topic(DECISIONS)
        consumers = {name: _reader(sc.settings, level) for name, level in READERS.items()}
        producer = AIOKafkaProducer(
            bootstrap_servers=sc.settings.bootstrap_servers, acks="all", linger_ms=0
        )
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        with running(worker):
            try:
                await producer.start()
                for consumer in consumers.values():
                    await _start_reader(consumer, decisions, sc.settings.partitions)
                await worker.wait_ready()
                total = max(2, int(opts.rate * opts.duration))
                warmup = min(3.0, opts.duration * 0.2)
                _progress(
                    f"(c) worker ready; offering {total:,} visits at {opts.rate:,.0f}/s "
                    f"for {opts.duration:g} s (first {warmup:g} s not measured)"
                )
                t0 = time.perf_counter()
                client = LoadClient(sc, producer, warmup_until=t0 + warmup)
                tasks = [
                    asyncio.create_task(_read_decisions(client, name, consumer, stop))
                    for name, consumer in consumers.items()
                ]
                sent, max_lag, t_last = 0, 0.0, t0
                hard_stop = t0 + opts.duration * 1.5 + 5
                while sent < total:
                    now = time.perf_counter()
                    if now > hard_stop:
                        _progress(f"(c) the sender fell behind: {sent:,}/{total:,} visits sent")
                        break
                    due = min(total, int((now - t0) * opts.rate) + 1)
                    if sent < due:
                        max_lag = max(max_lag, now - (t0 + sent / opts.rate))
                    while sent < due:
                        await client.send_visit(sent)
                        sent += 1
                        t_last = time.perf_counter()
                    await client.send_due_conversions()
                    for task in tasks:
                        if task.done():
                            await task  # raises the reader's error
                    worker.check_alive()
                    delay = t0 + sent / opts.rate - time.perf_counter()
                    await asyncio.sleep(max(0.0, delay))
                offered = (sent - 1) / (t_last - t0) if t_last > t0 else opts.rate
                drain_deadline = time.perf_counter() + drain_timeout
                while not client.complete() and time.perf_counter() < drain_deadline:
                    worker.check_alive()
                    await client.send_due_conversions()
                    await asyncio.sleep(POLL_S)
                await client.send_due_conversions(flush=True)
                if not client.complete():
                    _note(
                        "(c) decisions missing after the drain: "
                        + ", ".join(
                            f"{name} {len(s):,}/{sent:,}" for name, s in client.seen.items()
                        )
                    )
                results = await asyncio.wait_for(
                    asyncio.gather(*client.pending, return_exceptions=True), 60
                )
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    msg = f"(c) {len(failed)} sends failed, first: {failed[0]!r}"
                    raise BenchError(msg)
                assert sc.dsn is not None
                tracked = await _wait_tracked(
                    sc.dsn, client.exposures_sent, client.conversions_sent, timeout=15
                )
            finally:
                stop.set()
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                for consumer in consumers.values():
                    await consumer.stop()
                await producer.stop()
        measured = sum(1 for _, counted in client.sent_at.values() if counted)
        decided = len(client.seen["uncommitted"])
        span = client.last_decided - (client.first_decided or client.last_decided)
        return LatencyResult(
            offered_per_s=offered,
            sent=sent,
            measured=measured,
            warmup_s=warmup,
            max_sender_lag_ms=max_lag * 1000,
            exposures=client.exposures_sent,
            conversions=client.conversions_sent,
            tracked_exposures=tracked[0],
            tracked_conversions=tracked[1],
            decided_per_s=(decided - 1) / span if span > 0 else 0.0,
            samples=client.samples,
        )


# --- the run ----------------------------------------------------------------------------


@dataclass
class Report:
    settings: Settings
    opts: Options
    backlog: Backlog
    pipeline: PipelineResult
    plain: ReferenceResult | None
    faust: ReferenceResult | None
    latency: LatencyResult
    notes: list[str]

    def as_json(self) -> dict[str, Any]:
        def r(x: float | None, digits: int = 1) -> float | None:
            return None if x is None else round(x, digits)

        faust_eps = self.faust.eps if self.faust else None
        return {
            "pipeline_visits_per_s": r(self.pipeline.visits_per_s),
            "pipeline_eps": r(self.pipeline.eps),
            "baseline_eps": r(self.plain.eps if self.plain else None),
            "faust_reference_eps": r(faust_eps),
            "ratio_to_faust_reference": r(self.pipeline.eps / faust_eps if faust_eps else None, 3),
            "offered_visits_per_s": r(self.latency.offered_per_s),
            "latency_ms": {
                name: {k: round(v, 2) for k, v in self.latency.percentiles(name).items()}
                for name in READERS
            },
        }

    def table(self) -> str:
        p, lat, s = self.pipeline, self.latency, self.settings
        rows: list[tuple[str, str, str]] = []

        def ratio(x: float, ref: ReferenceResult | None) -> str:
            return f"{x / ref.eps:.2f}" if ref else "-"

        rows.append(
            (
                f"(a) pipeline, 1 worker, backlog of {p.visits:,} visits ({p.events:,} events)",
                "",
                "",
            )
        )
        rows.append(("    visits/s", f"{p.visits_per_s:,.0f}", ""))
        rows.append(
            (
                "    events/s (visits + exposures + conversions)",
                f"{p.eps:,.0f}",
                f"{ratio(p.eps, self.faust)} × faust ref, {ratio(p.eps, self.plain)} × plain",
            )
        )
        rows.append(("    all decisions on `decisions` after", f"{p.decide_seconds:.2f} s", ""))
        rows.append(("    all counts in Postgres after", f"{p.track_seconds:.2f} s", ""))
        rows.append(
            (
                "    conversions attributed / unattributable",
                f"{p.attributed:,} / {p.unattributed:,}",
                "",
            )
        )
        rows.append(("    worker start → /ready", f"{p.ready_seconds:.1f} s", ""))
        if self.plain and self.faust:
            rows.append((f"(b) references over the same {self.backlog.events:,} events", "", ""))
            rows.append(
                ("    plain aiokafka consume→produce, events/s", f"{self.plain.eps:,.0f}", "")
            )
            rows.append(
                ("    naive faust agent (Table + send), events/s", f"{self.faust.eps:,.0f}", "")
            )
            rows.append(
                (
                    "    ratio pipeline_eps / faust_reference_eps",
                    f"{p.eps / self.faust.eps:.2f}",
                    "",
                )
            )
            rows.append(
                ("    ratio pipeline_eps / plain_loop_eps", f"{p.eps / self.plain.eps:.3f}", "")
            )
        else:
            rows.append(("(b) references skipped (--skip-references)", "", ""))
        rows.append(
            (
                f"(c) latency, {lat.offered_per_s:,.0f} visits/s offered for "
                f"{self.opts.duration:g} s (first {lat.warmup_s:g} s not measured)",
                "",
                "",
            )
        )
        for name, level in READERS.items():
            pct = lat.percentiles(name)
            rows.append(
                (
                    f"    visit → decision, {level}, p50 / p95 / p99",
                    f"{pct['p50']:.1f} / {pct['p95']:.1f} / {pct['p99']:.1f} ms",
                    f"{len(lat.samples[name]):,}/{lat.measured:,} decided",
                )
            )
        rows.append(("    decisions read per s (uncommitted)", f"{lat.decided_per_s:,.0f}", ""))
        rows.append(
            (
                "    client exposures / conversions sent",
                f"{lat.exposures:,} / {lat.conversions:,}",
                "",
            )
        )
        rows.append(
            (
                "    … counted in Postgres after the run",
                f"{lat.tracked_exposures:,} / {lat.tracked_conversions:,}",
                "",
            )
        )
        rows.append(
            ("    sender's worst lag behind schedule", f"{lat.max_sender_lag_ms:.1f} ms", "")
        )
        width = max(len(r[0]) for r in rows) + 2
        vwidth = max(len(r[1]) for r in rows) + 2
        head = (
            f"bench pipeline — Kafka {s.bootstrap_servers}, {s.partitions} partitions, "
            f"{s.processing_guarantee}, commit interval {s.commit_interval_s:g} s, "
            f"{os.cpu_count()} CPUs"
        )
        lines = [head, "-" * len(head)]
        lines += [f"{a:<{width}}{b:>{vwidth}}  {c}".rstrip() for a, b, c in rows]
        lines += [f"NOTE: {note}" for note in self.notes]
        return "\n".join(lines)


async def run(base: Settings, opts: Options) -> Report:
    _loopback_only(base.bootstrap_servers)
    _notes.clear()
    workdir = Path(tempfile.mkdtemp(prefix="bandit-bench-"))
    ok = False
    try:
        backlog = make_backlog(opts.visits)
        _progress(
            f"backlog: {backlog.visits:,} visits, {backlog.exposures:,} exposures, "
            f"{backlog.conversions:,} conversions; logs in {workdir}"
        )
        budget = 60 + backlog.events / 500
        pipeline = await measure_pipeline(base, backlog, workdir, timeout=budget)
        _progress(
            f"(a) pipeline: {pipeline.visits_per_s:,.0f} visits/s, {pipeline.eps:,.0f} events/s"
        )
        plain = faust = None
        if not opts.skip_references:
            plain = await measure_plain_loop(base, backlog, timeout=budget)
            _progress(f"(b) plain aiokafka loop: {plain.eps:,.0f} events/s")
            faust = await measure_faust_reference(base, backlog, workdir, timeout=budget)
            _progress(f"(b) naive faust reference: {faust.eps:,.0f} events/s")
        latency = await measure_latency(base, opts, workdir, drain_timeout=20 + opts.duration)
        report = Report(base, opts, backlog, pipeline, plain, faust, latency, list(_notes))
        ok = not _notes
        return report
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _progress(f"worker logs kept in {workdir}")


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # the load generator and readers then share asyncio's loop
        return None
    return uvloop.new_event_loop


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = out or sys.stdout
    try:
        opts = Options.from_args(args)
        base = Settings()
        # fresh topics log NotLeaderForPartition once or twice; real failures raise anyway
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            report = runner.run(run(base, opts))
    except BenchError as exc:
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


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m streams.bench.pipeline",
        description=__doc__.split("\n")[0] if __doc__ else None,
    )
    add_arguments(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(_parse(None)))
