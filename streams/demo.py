"""`bandit-stream demo`: the whole pipeline, live, on synthetic traffic whose truth is known.

Services up (the local ones only when none are configured), migrations, topics, an experiment
of three headlines whose best one differs by segment, ONE Faust worker subprocess, then about
a minute of visits through Kafka: every decision is exposed as decided and converts with its
segment's true rate. At the end the weights the worker published on `allocations` are compared
with the truth. What the demo starts it stops, also on Ctrl-C; each run has its own experiment,
topics and consumer group, so a rerun never sees old data.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.admin import ensure_topics
from streams.contracts import format_timestamp
from streams.core.context import extract_context
from streams.core.segments import segment_key
from streams.errors import ServiceError
from streams.experiments import new_experiment_document
from streams.services import local
from streams.settings import Settings
from streams.sink.experiments import save_experiment
from streams.sink.migrations import migrate
from streams.topics import ALLOCATIONS, CONVERSIONS, DEADLETTER, DECISIONS, EXPOSURES, VISITS
from streams.topics import topic_name as _topic

VARIANTS = ("headline-a", "headline-b", "headline-c")
FEATURES = ["device", "source"]
FOUND_AT = 0.9  # the true best variant holds at least this weight: "found"
_IPHONE_IG = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.18.84"
)
_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36"
)
_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Safari/605.1.15"
)


@dataclass(frozen=True)
class Segment:
    """One traffic segment of the ground truth: its share, true rates and raw contexts."""

    key: str
    share: float
    rates: tuple[float, float, float]  # true conversion rate of each of VARIANTS
    contexts: tuple[dict[str, str], ...]

    @property
    def best(self) -> str:
        return VARIANTS[self.rates.index(max(self.rates))]


TRUTH = (
    Segment("device:mobile|source:instagram", 0.30, (0.12, 0.04, 0.03), (
        {"user_agent": _IPHONE_IG, "utm_source": "instagram", "utm_medium": "social"},
        {"user_agent": _ANDROID, "referrer": "https://l.instagram.com/"})),
    Segment("device:mobile|source:google", 0.25, (0.03, 0.12, 0.05), (
        {"user_agent": _ANDROID, "referrer": "https://www.google.com/"},
        {"user_agent": _IPHONE, "utm_source": "google", "utm_medium": "cpc"})),
    Segment("device:desktop|source:google", 0.25, (0.04, 0.03, 0.12), (
        {"user_agent": _WINDOWS, "referrer": "https://www.google.de/"},
        {"user_agent": _MAC, "utm_source": "google", "utm_medium": "cpc"})),
    Segment("device:desktop|source:direct", 0.20, (0.11, 0.03, 0.05), (
        {"user_agent": _WINDOWS, "referrer": ""}, {"user_agent": _MAC, "referrer": ""})),
)  # fmt: skip
BY_KEY = {s.key: s for s in TRUTH}


def verify_truth() -> None:
    """Every context of the truth lands in its segment (the worker's own pure functions)."""
    for seg in TRUTH:
        for ctx in seg.contexts:
            got = segment_key(extract_context(ctx, datetime.now(UTC)), FEATURES)
            if got != seg.key:
                msg = f"demo context {ctx} gives segment {got!r}, not {seg.key!r}"
                raise ServiceError(msg)


def global_rates() -> list[float]:
    return [sum(s.share * s.rates[i] for s in TRUTH) for i in range(len(VARIANTS))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="how long to send traffic (default 60, 5..3600)"
    )
    parser.add_argument(
        "--rate", type=float, default=300.0, help="visits per second (default 300, 1..2000)"
    )
    parser.add_argument(
        "--keep-services", action="store_true", help="leave the local services running at the end"
    )


class Worker:
    """The demo's one Faust worker subprocess; its output goes to a log file."""

    def __init__(self, settings: Settings, log: Path, datadir: Path) -> None:
        self.settings, self.log, self.datadir = settings, log, datadir
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        s = self.settings
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers,
            "DATABASE_URL": s.database_dsn,
            "BANDIT_TOPIC_PREFIX": s.topic_prefix,
            "BANDIT_APP_ID": s.app_id,
            "BANDIT_PARTITIONS": str(s.partitions),
            "BANDIT_REPLICATION_FACTOR": str(s.replication_factor),
            "BANDIT_WEIGHTS_MIN_INTERVAL_S": str(s.weights_min_interval_s),
            "BANDIT_WEIGHTS_MIN_CHANGE": str(s.weights_min_change),
        }
        cmd = [
            sys.executable,
            "-m",
            "faust",
            "-A",
            "streams.app",
            "--datadir",
            str(self.datadir),
            "worker",
            "-l",
            "info",
            "--web-port",
            str(self.port),
            "--web-host",
            "127.0.0.1",
        ]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = self.proc.returncode if self.proc else None
            msg = f"the worker exited ({code}); its log {self.log} ends with:\n{self.tail()}"
            raise ServiceError(msg)

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self, timeout: float = 120.0) -> None:
        url = f"http://127.0.0.1:{self.port}/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status = await asyncio.to_thread(_http_status, url)
            except OSError:
                status = 0
            if status == 200:
                return
            await asyncio.sleep(0.3)
        msg = f"the worker was not ready within {timeout:.0f} s; see {self.log}:\n{self.tail()}"
        raise ServiceError(msg)

    def stop(self) -> str:
        """SIGTERM, then SIGKILL after 30 s; says how it went."""
        if self.proc is None or self.proc.poll() is not None:
            return "had exited" if self.proc else "not started"
        self.proc.send_signal(signal.SIGTERM)
        try:
            return f"stopped (exit {self.proc.wait(30)})"
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "killed: it ignored SIGTERM for 30 s"


def _http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status)


@dataclass
class Stats:
    visits: Counter[str] = field(default_factory=Counter)
    decisions: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    seen: set[str] = field(default_factory=set)
    exposures: int = 0
    conversions: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    allocations: dict[str, dict[str, Any]] = field(default_factory=dict)
    updates: int = 0
    counted: tuple[int, int] = (0, 0)  # exposures, conversions in Postgres

    @property
    def decided(self) -> int:
        return len(self.seen)

    def found(self) -> int:
        return sum(verdict(self.allocations.get(s.key), s.best)[0] == "found" for s in TRUTH)


def verdict(doc: dict[str, Any] | None, best: str) -> tuple[str, str]:
    """("found" | "leaning" | "NOT YET" | "no weights", the argmax variant)."""
    if doc is None:
        return "no weights", "-"
    weights = doc["weights"]
    top = max(weights, key=weights.get)
    if top != best:
        return "NOT YET", top
    return ("found" if weights[top] >= FOUND_AT else "leaning"), top


class Progress:
    """A bar redrawn on a TTY; one line every 10 s otherwise (CI logs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.tty = seconds, sys.stderr.isatty()
        self.last = 0.0

    def show(self, elapsed: float, stats: Stats, phase: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < (0.25 if self.tty else 10.0):
            return
        self.last = now
        done = min(1.0, elapsed / self.seconds)
        bar = "#" * int(done * 24) + "." * (24 - int(done * 24))
        line = (
            f"[{bar}] {min(elapsed, self.seconds):3.0f}/{self.seconds:.0f} s {phase:<8} "
            f"visits {sum(stats.visits.values())}  decisions {stats.decided}  "
            f"conversions {stats.conversions}  dead letters {sum(stats.dead.values())}  "
            f"best found {stats.found()}/{len(TRUTH)}"
        )
        print(
            f"\r{line}\033[K" if self.tty else line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


async def drive(
    settings: Settings, experiment_id: str, seconds: float, rate: float, worker: Worker
) -> Stats:
    """Send visits at `rate` for `seconds`, expose every decision, convert per the truth."""
    rng, stats, progress = random.Random(), Stats(), Progress(seconds)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    topics = {base: _topic(settings, base) for base in (VISITS, EXPOSURES, CONVERSIONS)}
    watched = {_topic(settings, b): b for b in (DECISIONS, ALLOCATIONS, DEADLETTER)}
    due: list[tuple[float, int, dict[str, Any]]] = []  # conversions waiting for their time
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t in watched for p in range(settings.partitions)])
        pending: list[asyncio.Future[Any]] = []

        async def send(base: str, doc: dict[str, Any]) -> None:
            pending.append(
                await producer.send(topics[base], orjson.dumps(doc), key=doc["visitor_id"].encode())
            )

        async def step(poll_ms: int) -> None:
            """Read what the worker wrote; expose, schedule and send conversions that are due."""
            for tp, records in (await consumer.getmany(timeout_ms=poll_ms)).items():
                for record in records:
                    doc = orjson.loads(record.value or b"null")
                    base = watched[tp.topic]
                    if base == DEADLETTER:
                        stats.dead[str(doc.get("reason"))] += 1
                    elif base == ALLOCATIONS:
                        current = stats.allocations.get(doc["segment_key"])
                        if current is None or doc["version"] >= current["version"]:
                            stats.allocations[doc["segment_key"]] = doc
                        stats.updates += 1
                    elif doc["decision_id"] not in stats.seen:
                        await on_decision(doc)
            now = time.monotonic()
            while due and due[0][0] <= now:
                conversion = heapq.heappop(due)[2]
                await send(CONVERSIONS, {**conversion, "occurred_at": _now()})
                stats.conversions += 1
            if pending:
                await asyncio.gather(*pending)
                pending.clear()
            worker.check_alive()

        async def on_decision(doc: dict[str, Any]) -> None:
            stats.seen.add(doc["decision_id"])
            seg, variant = doc["segment_key"], doc["variant_id"]
            stats.decisions[seg][variant] += 1
            await send(
                EXPOSURES,
                {
                    "event_id": str(uuid.uuid4()),
                    "experiment_id": experiment_id,
                    "visitor_id": doc["visitor_id"],
                    "variant_id": variant,
                    "decision_id": doc["decision_id"],
                    "segment_key": seg,
                    "occurred_at": _now(),
                },
            )
            stats.exposures += 1
            truth = BY_KEY.get(seg)
            if truth is not None and rng.random() < truth.rates[VARIANTS.index(variant)]:
                conversion = {
                    "event_id": str(uuid.uuid4()),
                    "experiment_id": experiment_id,
                    "visitor_id": doc["visitor_id"],
                }
                at = time.monotonic() + rng.uniform(0.5, 3.0)
                heapq.heappush(due, (at, len(stats.seen), conversion))

        start = time.monotonic()
        sent = 0
        while (elapsed := time.monotonic() - start) < seconds:
            for _ in range(min(int(elapsed * rate) - sent, 2000)):
                seg = rng.choices(TRUTH, weights=[s.share for s in TRUTH])[0]
                visitor = f"v-{uuid.uuid4().hex[:16]}"
                await send(
                    VISITS,
                    {
                        "event_id": str(uuid.uuid4()),
                        "experiment_id": experiment_id,
                        "visitor_id": visitor,
                        "occurred_at": _now(),
                        "context": {**rng.choice(seg.contexts), "country": "US"},
                    },
                )
                stats.visits[seg.key] += 1
                sent += 1
            await step(20)
            progress.show(elapsed, stats, "sending")
        # drain: every visit decided, every conversion sent, every event counted in Postgres
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and (stats.decided < sent or due):
            await step(100)
            progress.show(time.monotonic() - start, stats, "draining")
        while time.monotonic() < deadline and not _all_counted(stats):
            stats.counted = await _counted(settings, experiment_id)
            await step(200)
        # the learner recomputes a segment at most once per interval: give it two
        settle = time.monotonic() + 2 * settings.weights_min_interval_s + 1.5
        while time.monotonic() < settle:
            await step(200)
        await _read_to_end(consumer, step)
        progress.show(time.monotonic() - start, stats, "done", force=True)
    finally:
        progress.close()
        await consumer.stop()
        await producer.stop()
    return stats


def _all_counted(stats: Stats) -> bool:
    exposures, conversions = stats.counted
    unattributable = stats.dead.get("unattributable", 0)
    return exposures >= stats.exposures and conversions + unattributable >= stats.conversions


async def _counted(settings: Settings, experiment_id: str) -> tuple[int, int]:
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(exposures), 0) AS e, coalesce(sum(conversions), 0) AS c "
            "FROM variant_segment_state WHERE experiment_id = $1",
            experiment_id,
        )
    finally:
        await conn.close()
    return (int(row["e"]), int(row["c"])) if row else (0, 0)


async def _read_to_end(consumer: AIOKafkaConsumer, step: Any) -> None:
    """Consume until every watched partition is read up to its end offset now."""
    ends = await consumer.end_offsets(list(consumer.assignment()))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        positions = {tp: await consumer.position(tp) for tp in ends}
        if all(positions[tp] >= end for tp, end in ends.items()):
            return
        await step(200)


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


def _pct(values: list[float]) -> str:
    return " ".join(f"{v * 100:4.0f}%" for v in values)


def report(stats: Stats, experiment_id: str) -> list[str]:
    """The summary table and totals (plain text, fixed columns)."""
    short = "/".join(v.rsplit("-", 1)[-1] for v in VARIANTS)
    head = (
        f"  {'segment':<31} {'visits':>6}  {'true rate ' + short:<17}  "
        f"{'traffic ' + short:<17}  {'weights now ' + short:<19}  "
        f"{'best now':<11} {'true best':<11} verdict"
    )
    lines = [
        f"Results of {experiment_id} (weights: the last `allocations` record per segment)",
        "",
        head,
        "  " + "-" * (len(head) - 2),
    ]
    rows = [
        (s.key, stats.visits[s.key], list(s.rates), stats.decisions.get(s.key, Counter()), s.best)
        for s in TRUTH
    ]
    everything: Counter[str] = sum(stats.decisions.values(), Counter())
    best_global = VARIANTS[max(range(len(VARIANTS)), key=lambda i: global_rates()[i])]
    rows.append(
        (
            "* (whole experiment)",
            sum(stats.visits.values()),
            global_rates(),
            everything,
            best_global,
        )
    )
    not_converged = []
    for key, visits, rates, decided, best in rows:
        doc = stats.allocations.get("*" if key.startswith("*") else key)
        state, top = verdict(doc, best)
        total = sum(decided.values()) or 1
        shares = [decided[v] / total for v in VARIANTS]
        weights = " ".join(f"{doc['weights'][v]:5.2f}" for v in VARIANTS) if doc else "-"
        lines.append(
            f"  {key:<31} {visits:>6}  {_pct(rates):<17}  {_pct(shares):<17}  "
            f"{weights:<19}  {top:<11} {best:<11} {state}"
        )
        if state != "found" and not key.startswith("*"):
            not_converged.append(
                f"{key} ({state}: {top} at {doc['weights'][top]:.2f})"
                if doc
                else f"{key} ({state})"
            )
    visits_sent = sum(stats.visits.values())
    dead = sum(stats.dead.values())
    realised = stats.conversions / stats.exposures if stats.exposures else 0.0
    oracle = sum(s.share * max(s.rates) for s in TRUTH)
    lines += [
        "",
        f"  visits sent       {visits_sent:>7}   decisions read    {stats.decided:>7}   "
        f"({'one per visit' if stats.decided == visits_sent else 'MISSING DECISIONS'})",
        f"  exposures sent    {stats.exposures:>7}   conversions sent  {stats.conversions:>7}   "
        f"counted in Postgres: {stats.counted[0]} exposures, {stats.counted[1]} conversions",
        f"  allocation updates {stats.updates:>6}   dead letters      {dead:>7}   "
        + (", ".join(f"{r}: {n}" for r, n in stats.dead.items()) if dead else "(0 expected)"),
        f"  conversion rate   {realised * 100:6.2f} %  (an even split: "
        f"{sum(global_rates()) / len(VARIANTS) * 100:.2f} %, always {best_global}: "
        f"{max(global_rates()) * 100:.2f} %, the best per segment: {oracle * 100:.2f} %)",
        "",
        f"  {stats.found()}/{len(TRUTH)} segments found their true best variant "
        f"(weight >= {FOUND_AT})"
        + ("." if not not_converged else "; not converged yet: " + ", ".join(not_converged)),
    ]
    return lines


def main(args: argparse.Namespace, settings: Settings) -> int:
    seconds = min(max(float(args.seconds), 5.0), 3600.0)
    rate = min(max(float(args.rate), 1.0), 2000.0)
    verify_truth()
    began = time.monotonic()
    print(
        f"bandit-stream demo: {seconds:.0f} s of synthetic traffic at {rate:.0f} visits/s, "
        f"{len(TRUTH)} segments whose best headline differs",
        flush=True,
    )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    endpoints = local.up(settings)
    for name, configured, started, where in (
        ("kafka", settings.kafka_configured, endpoints.started_kafka, endpoints.bootstrap_servers),
        (
            "postgres",
            settings.database_configured,
            endpoints.started_postgres,
            "local cluster" if not settings.database_configured else "DATABASE_URL",
        ),
    ):
        how = "configured" if configured else "started now" if started else "already running"
        print(f"  {name:<9} {how:<16} {where}", flush=True)
    run = uuid.uuid4().hex[:8]
    experiment_id = f"demo-{run}"
    demo = settings.model_copy(
        update={
            "topic_prefix": f"{settings.topic_prefix}demo-{run}.",
            "app_id": f"bandit-demo-{run}",
        }
    )
    worker = Worker(
        demo,
        settings.state_dir / "demo" / "worker.log",
        settings.state_dir / "demo" / f"data-{run}",
    )
    try:
        applied = asyncio.run(migrate(demo.database_dsn))
        print(f"  {'database':<9} {len(applied)} migrations applied now", flush=True)
        created = asyncio.run(ensure_topics(demo))
        print(f"  {'topics':<9} {len(created)} created with prefix {demo.topic_prefix!r}")
        doc = new_experiment_document(
            experiment_id,
            list(VARIANTS),
            context_features=FEATURES,
            name="Demo: which headline, for whom?",
        )
        asyncio.run(save_experiment(demo, doc))
        print(
            f"  {'experiment':<9} {experiment_id}: {', '.join(VARIANTS)}; segments by "
            f"{' x '.join(FEATURES)}; policy pooled"
        )
        worker.start()
        print(
            f"  {'worker':<9} pid {worker.proc.pid if worker.proc else '?'}, log {worker.log}",
            flush=True,
        )
        asyncio.run(worker.wait_ready())
        print(
            f"  {'worker':<9} ready after {time.monotonic() - began:.0f} s; sending traffic "
            "(progress on stderr)",
            flush=True,
        )
        stats = asyncio.run(drive(demo, experiment_id, seconds, rate, worker))
        print()
        print("\n".join(report(stats, experiment_id)))
        ok = stats.decided == sum(stats.visits.values()) and stats.decided > 0
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping what the demo started", file=sys.stderr, flush=True)
        return 130
    finally:
        print(f"  worker    {worker.stop()}", flush=True)
        shutil.rmtree(worker.datadir, ignore_errors=True)
        if args.keep_services:
            print(
                "  services  left running (--keep-services); `bandit-stream services down` "
                "stops them"
            )
        else:
            stopped = local.down(
                settings, kafka=endpoints.started_kafka, postgres=endpoints.started_postgres
            )
            print(f"  services  {'stopped ' + ', '.join(stopped) if stopped else 'left as found'}")
        print(f"  wall time {time.monotonic() - began:.0f} s", flush=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    from streams.settings import get_settings

    _parser = argparse.ArgumentParser(prog="python -m streams.demo")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args(), get_settings()))
