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
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import orjson
from aiokafka import TopicPartition

from streams import kafka_clients
from streams.admin import ensure_topics
from streams.contracts import format_timestamp
from streams.core.context import extract_context
from streams.core.segments import segment_key
from streams.errors import ServiceError
from streams.experiments import new_experiment_document
from streams.services import local
from streams.services.worker import WorkerProcess
from streams.settings import Settings
from streams.sink.experiments import save_experiment
from streams.sink.migrations import migrate
from streams.topics import ALLOCATIONS, CONVERSIONS, DEADLETTER, DECISIONS, EXPOSURES, VISITS
from streams.topics import topic_name as _topic

VARIANTS = ("headline-a", "headline-b", "headline-c")
FEATURES = ["device", "source"]
FOUND_AT = 0.9  # "found": the true best variant holds at least this weight
DRAIN_S = 45.0  # longest wait after the traffic for decisions, conversions and counts

# fmt: off
_UA = {
    "iphone-instagram": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/"
                        "605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.18.84",
    "iphone": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
              "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "android": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
               "Chrome/124.0.0.0 Mobile Safari/537.36",
    "windows": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
               "Chrome/124.0.0.0 Safari/537.36",
    "mac": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
           "Gecko) Version/17.4 Safari/605.1.15",
}
# fmt: on


@dataclass(frozen=True)
class Segment:
    """One segment of the ground truth: traffic share, true rates, raw contexts that map to it."""

    key: str
    share: float
    rates: tuple[float, float, float]  # true conversion rate of each of VARIANTS
    contexts: tuple[dict[str, str], ...]

    @property
    def best(self) -> str:
        return VARIANTS[self.rates.index(max(self.rates))]


TRUTH = (
    Segment("device:mobile|source:instagram", 0.30, (0.12, 0.04, 0.03), (
        {"user_agent": _UA["iphone-instagram"], "utm_source": "instagram", "utm_medium": "social"},
        {"user_agent": _UA["android"], "referrer": "https://l.instagram.com/"})),
    Segment("device:mobile|source:google", 0.25, (0.03, 0.12, 0.05), (
        {"user_agent": _UA["android"], "referrer": "https://www.google.com/"},
        {"user_agent": _UA["iphone"], "utm_source": "google", "utm_medium": "cpc"})),
    Segment("device:desktop|source:google", 0.25, (0.04, 0.03, 0.12), (
        {"user_agent": _UA["windows"], "referrer": "https://www.google.de/"},
        {"user_agent": _UA["mac"], "utm_source": "google", "utm_medium": "cpc"})),
    Segment("device:desktop|source:direct", 0.20, (0.11, 0.03, 0.05), (
        {"user_agent": _UA["windows"], "referrer": ""},
        {"user_agent": _UA["mac"], "referrer": ""})),
)  # fmt: skip
BY_KEY = {s.key: s for s in TRUTH}
OVERALL = tuple(sum(s.share * s.rates[i] for s in TRUTH) for i in range(len(VARIANTS)))


def verify_truth() -> None:
    """Every context of the truth lands in its segment, by the worker's own pure functions."""
    for seg in TRUTH:
        for ctx in seg.contexts:
            got = segment_key(extract_context(ctx, datetime.now(UTC)), FEATURES)
            if got != seg.key:
                msg = f"demo context {ctx} falls in segment {got!r}, not {seg.key!r}"
                raise ServiceError(msg)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--seconds", type=float, default=60.0, help="traffic duration (default 60; 5..3600)")
    add("--rate", type=float, default=300.0, help="visits per second (default 300; 1..2000)")
    add(
        "--keep-services",
        action="store_true",
        help="leave the local services running (at a terminal, the worker and its dashboard "
        "too, until Ctrl-C)",
    )


class Worker(WorkerProcess):
    """The demo's one worker, started with the demo's whole configuration."""

    def __init__(self, settings: Settings, log: Path, datadir: Path) -> None:
        env = settings.environment()
        if log.exists():
            log.unlink()  # one run per log file
        super().__init__("streams.app", env, log, datadir=datadir)
        self.scratch = datadir

    def fail(self, why: str) -> NoReturn:
        raise self.failure(why)

    def stop_and_say(self) -> str:
        """SIGTERM, then SIGKILL after 30 s; says how it went."""
        if self.proc is None:
            return "not started"
        if self.proc.poll() is not None:
            return "had exited"
        code = self.stop(30)
        return (
            f"stopped (exit code {code})"
            if code is not None
            else ("KILLED: it did not stop within 30 s of SIGTERM")
        )


@dataclass
class Stats:
    """What the demo sent and read back; allocations hold the newest record per segment."""

    visits: Counter[str] = field(default_factory=Counter)
    decisions: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    seen: set[str] = field(default_factory=set)  # decision ids (read at least once)
    exposures: int = 0
    conversions: int = 0
    dead: Counter[str] = field(default_factory=Counter)  # by reason
    allocations: dict[str, dict[str, Any]] = field(default_factory=dict)
    updates: int = 0
    counted: tuple[int, int] = (0, 0)  # exposures, conversions in Postgres

    def found(self) -> int:
        return sum(verdict(self.allocations.get(s.key), s.best)[0] == "found" for s in TRUTH)

    def all_counted(self) -> bool:
        lost = self.dead["unattributable"]
        return self.counted[0] >= self.exposures and self.counted[1] + lost >= self.conversions

    def problems(self) -> list[str]:
        sent, dead, found = sum(self.visits.values()), sum(self.dead.values()), []
        if not len(self.seen) == sent > 0:
            found.append(f"{sent - len(self.seen)} of {sent} visits got no decision")
        if not self.all_counted():
            found.append(
                f"the worker counted {self.counted[0]}/{self.exposures} exposures and "
                f"{self.counted[1]}/{self.conversions} conversions within {DRAIN_S:.0f} s "
                "(is the track stage stuck? see the worker log)"
            )
        if dead:
            found.append(f"{dead} dead letters: {dict(self.dead)}")
        return found


def verdict(doc: dict[str, Any] | None, best: str) -> tuple[str, str]:
    """("found" | "leaning" | "NOT YET" | "no weights", the variant of largest weight)."""
    if doc is None:
        return "no weights", "-"
    weights = doc["weights"]
    top = max(weights, key=weights.get)
    if top != best:
        return "NOT YET", top
    return ("found" if weights[top] >= FOUND_AT else "leaning"), top


class Progress:
    """A bar redrawn on stderr when it is a terminal; else one line every 10 s (CI logs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.tty, self.last = seconds, sys.stderr.isatty(), 0.0

    def show(self, elapsed: float, stats: Stats, phase: str, force: bool = False) -> None:
        if not force and time.monotonic() - self.last < (0.25 if self.tty else 10.0):
            return
        self.last = time.monotonic()
        filled = int(min(1.0, elapsed / self.seconds) * 24)
        line = (
            f"[{'#' * filled}{'.' * (24 - filled)}] {min(elapsed, self.seconds):3.0f}/"
            f"{self.seconds:.0f} s {phase:<8} visits {sum(stats.visits.values())}  decisions "
            f"{len(stats.seen)}  conversions {stats.conversions}  dead letters "
            f"{sum(stats.dead.values())}  best found {stats.found()}/{len(TRUTH)}"
        )
        end = "" if self.tty else "\n"
        print(f"\r{line}\033[K" if self.tty else line, end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def _event(experiment_id: str, visitor_id: str, **fields: Any) -> dict[str, Any]:
    now = format_timestamp(datetime.now(UTC))
    ids = {"event_id": str(uuid.uuid4()), "experiment_id": experiment_id, "visitor_id": visitor_id}
    return {**ids, "occurred_at": now, **fields}


async def drive(
    settings: Settings, experiment_id: str, seconds: float, rate: float, worker: Worker
) -> Stats:
    """Send visits at `rate` for `seconds`, expose every decision, convert per the truth."""
    rng, stats, progress = random.Random(), Stats(), Progress(seconds)
    servers = settings.bootstrap_servers
    producer = kafka_clients.producer(settings, bootstrap_servers=servers, acks="all", linger_ms=5)
    consumer = kafka_clients.consumer(
        settings, bootstrap_servers=servers, group_id=None, auto_offset_reset="earliest"
    )  # the topics are the run's own: read them from their beginning
    watched = {_topic(settings, b): b for b in (DECISIONS, ALLOCATIONS, DEADLETTER)}
    due: list[tuple[float, str]] = []  # (when, visitor_id) of the conversions to send
    pending: list[asyncio.Future[Any]] = []

    async def send(base: str, doc: dict[str, Any]) -> None:
        value, key = orjson.dumps(doc), doc["visitor_id"].encode()
        pending.append(await producer.send(_topic(settings, base), value, key=key))

    async def step(poll_ms: int) -> None:
        """Read what the worker wrote, expose each new decision, send the due conversions."""
        for tp, records in (await consumer.getmany(timeout_ms=poll_ms)).items():
            for doc in (orjson.loads(r.value or b"null") for r in records):
                if watched[tp.topic] == DEADLETTER:
                    stats.dead[str(doc.get("reason"))] += 1
                elif watched[tp.topic] == ALLOCATIONS:
                    stats.updates += 1
                    current = stats.allocations.get(doc["segment_key"])
                    if current is None or doc["version"] >= current["version"]:
                        stats.allocations[doc["segment_key"]] = doc
                elif doc["decision_id"] not in stats.seen:
                    await expose(doc)
        while due and due[0][0] <= time.monotonic():
            await send(CONVERSIONS, _event(experiment_id, heapq.heappop(due)[1]))
            stats.conversions += 1
        await asyncio.gather(*pending)
        pending.clear()
        worker.check_alive()

    async def expose(decision: dict[str, Any]) -> None:
        stats.seen.add(decision["decision_id"])
        seg, variant, visitor = (decision[k] for k in ("segment_key", "variant_id", "visitor_id"))
        stats.decisions[seg][variant] += 1
        ids = {"variant_id": variant, "decision_id": decision["decision_id"], "segment_key": seg}
        await send(EXPOSURES, _event(experiment_id, visitor, **ids))
        stats.exposures += 1
        truth = BY_KEY.get(seg)
        if truth is not None and rng.random() < truth.rates[VARIANTS.index(variant)]:
            heapq.heappush(due, (time.monotonic() + rng.uniform(0.5, 3.0), visitor))

    await producer.start()
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t in watched for p in range(settings.partitions)])
        start, sent, shares = time.monotonic(), 0, [s.share for s in TRUTH]
        while (elapsed := time.monotonic() - start) < seconds:
            for _ in range(min(int(elapsed * rate) - sent, 2000)):
                seg = rng.choices(TRUTH, weights=shares)[0]
                context = {**rng.choice(seg.contexts), "country": "US", "language": "en-US"}
                await send(VISITS, _event(experiment_id, f"v-{uuid.uuid4().hex}", context=context))
                stats.visits[seg.key] += 1
                sent += 1
            await step(20)
            progress.show(elapsed, stats, "sending")
            if elapsed > 20 and not stats.seen:
                worker.fail("no decision within 20 s of the first visit (is decide stuck?)")
        deadline = time.monotonic() + DRAIN_S  # every visit decided, every conversion sent ...
        while time.monotonic() < deadline and (len(stats.seen) < sent or due):
            await step(100)
            progress.show(time.monotonic() - start, stats, "draining")
        while time.monotonic() < deadline:  # ... and counted in Postgres by the track stage
            stats.counted = await _counted(settings, experiment_id)
            if stats.all_counted():
                break
            await step(300)
        # the learner recomputes a segment at most once per interval (a timer flushes the rest)
        settle = time.monotonic() + 2 * settings.weights_interval_s + 1.5
        while time.monotonic() < settle:
            await step(200)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while time.monotonic() < settle + 15:  # read everything the worker has written so far
            if all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                break
            await step(200)
        progress.show(time.monotonic() - start, stats, "done", force=True)
    finally:
        progress.close()
        await consumer.stop()
        await producer.stop()
    return stats


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


_HEAD = "segment|visits|true rate a/b/c|traffic a/b/c|weights a/b/c|best now|true best|verdict"
_WIDTHS = (-30, 6, -15, -15, -14, -10, -10, 0)  # per column; negative: left-aligned


def _row(*cells: object) -> str:
    pairs = zip(cells, _WIDTHS, strict=True)
    padded = (f"{c!s:<{-w}}" if w < 0 else f"{c!s:>{w}}" for c, w in pairs)
    return ("  " + "  ".join(padded)).rstrip()


def _join(values: Iterable[float], spec: str) -> str:
    return " ".join(format(v, spec) for v in values)


def report(stats: Stats, experiment_id: str) -> list[str]:
    """The results table (a row per segment, then the experiment-wide weights) and totals."""
    head = _row(*_HEAD.split("|"))
    title = f"Results of {experiment_id}: weights = the newest `allocations` record of the segment"
    lines = [title, "", head, "  " + "-" * (len(head) - 2)]
    overall_best = VARIANTS[OVERALL.index(max(OVERALL))]
    every: Counter[str] = Counter()
    for counts in stats.decisions.values():
        every.update(counts)
    rows: list[tuple[str, str, tuple[float, ...], Counter[str], str]] = [
        (s.key, s.key, s.rates, stats.decisions[s.key], s.best) for s in TRUTH
    ]
    rows.append(("* (whole experiment)", "*", OVERALL, every, overall_best))
    lagging = []
    for label, key, rates, decided, best in rows:
        doc = stats.allocations.get(key)
        state, top = verdict(doc, best)
        shares = [decided[v] / max(1, sum(decided.values())) for v in VARIANTS]
        weights = _join([doc["weights"][v] for v in VARIANTS], "4.2f") if doc else "-"
        visits = stats.visits[key] if key != "*" else sum(stats.visits.values())
        rates_and_shares = [_join(rates, "4.0%"), _join(shares, "4.0%")]
        lines.append(_row(label, visits, *rates_and_shares, weights, top, best, state))
        if state != "found" and key != "*":
            lead = f", {top} leads with {doc['weights'][top]:.2f}" if doc else ""
            lagging.append(f"    {key}: {state}{lead} (the true best is {best})")
    rate = stats.conversions / max(1, stats.exposures)
    oracle = sum(s.share * max(s.rates) for s in TRUTH)
    lines += [
        "",
        f"  visits sent {sum(stats.visits.values())}, decisions read {len(stats.seen)}, "
        f"exposures sent {stats.exposures}, conversions sent {stats.conversions}",
        f"  counted in Postgres: {stats.counted[0]} exposures, {stats.counted[1]} conversions; "
        f"allocation updates read {stats.updates}; dead letters {sum(stats.dead.values())}",
        f"  conversion rate {rate:.2%} (even split {sum(OVERALL) / len(OVERALL):.2%}, always "
        f"{overall_best} {max(OVERALL):.2%}, each segment's best variant {oracle:.2%})",
        f"  {stats.found()}/{len(TRUTH)} segments found their true best variant (its weight >= "
        f"{FOUND_AT})" + ("; not converged yet:" if lagging else ""),
        *lagging,
    ]
    return lines + [f"  PROBLEM: {p}" for p in stats.problems()]


def insights(settings: Settings, experiment_id: str, plot_path: Path) -> list[str]:
    """The recommendations the worker published (the insights topic's record) and a plot."""
    from streams.analytics.render import plot
    from streams.cli.report import load

    documents, history, computed = asyncio.run(load(settings, experiment_id))
    lines = [
        "recommendations "
        + ("(computed now: none published yet)" if computed else "published on `insights`:")
    ]
    for doc in documents:
        if doc["kind"] == "recommendation":
            lines += [f"  - {item['message']}" for item in doc["report"].get("items", [])]
    anomalies = [d["report"] for d in documents if d["kind"] == "anomaly"]
    lines += [f"  ! {a.get('message', a.get('kind', 'anomaly'))}" for a in anomalies]
    lines.append(
        f"plot: {plot(documents, history, plot_path)}  (`bandit-stream report "
        f"{experiment_id}` prints the whole report while the services run)"
    )
    return lines


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: asyncio.run then cancels its task cleanly (when SIGINT is not ignored)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def _say(step: str, text: str) -> None:
    print(f"  {step:<10} {text}", flush=True)


def _keep_dashboard(worker: Worker, url: str) -> None:
    """--keep-services at a terminal: the worker, and so its dashboard, stays up until Ctrl-C
    (a run without a terminal ends as usual, so that scripts never wait for a key)."""
    if not sys.stdin.isatty():
        return
    _say("dashboard", f"{url} stays up: Ctrl-C stops the worker (the services stay)")
    try:
        while worker.returncode is None:
            time.sleep(0.5)
        _say("worker", f"exited by itself ({worker.returncode}); see {worker.log}")
    except KeyboardInterrupt:
        print(file=sys.stderr, flush=True)


def main(args: argparse.Namespace, settings: Settings) -> int:
    seconds = min(max(float(args.seconds), 5.0), 3600.0)
    rate = min(max(float(args.rate), 1.0), 2000.0)
    verify_truth()
    began = time.monotonic()
    print(f"bandit-stream demo: {seconds:.0f} s of traffic at {rate:.0f} visits/s", flush=True)
    run = uuid.uuid4().hex[:8]  # the run's own experiment, topics and consumer group
    experiment_id, state = f"demo-{run}", settings.state_dir / "demo"
    prefix = f"{settings.topic_prefix}demo-{run}."
    demo = settings.model_copy(
        update={"topic_prefix": prefix, "app_id": f"demo-{run}", "insights_interval_s": 5.0}
    )
    worker = Worker(demo, state / "worker.log", state / f"data-{run}")
    endpoints: local.Endpoints | None = None
    restore = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM cleans up like Ctrl-C
        restore = signal.signal(signal.SIGTERM, _interrupt)
    try:
        endpoints = local.up(settings)
        for name, configured, started, where in (
            (
                "kafka",
                settings.kafka_configured,
                endpoints.started_kafka,
                endpoints.bootstrap_servers,
            ),
            ("postgres", settings.database_configured, endpoints.started_postgres, "(database)"),
        ):
            how = "configured" if configured else "started now" if started else "already running"
            _say(name, f"{how}  {where}")
        _say("database", f"migrated ({len(asyncio.run(migrate(demo.database_dsn)))} applied now)")
        _say("topics", f"{len(asyncio.run(ensure_topics(demo)))} created, prefix {prefix!r}")
        doc = new_experiment_document(experiment_id, list(VARIANTS), context_features=FEATURES)
        asyncio.run(save_experiment(demo, doc))
        _say("experiment", f"{experiment_id}: {', '.join(VARIANTS)}; segments by device x source")
        _say("worker", f"pid {worker.start()}, log {worker.log}")
        worker.wait_ready(120.0, 0.3)
        _say("worker", f"ready at {time.monotonic() - began:.0f} s; traffic (progress on stderr)")
        dashboard = f"http://127.0.0.1:{worker.web_port}/dashboard"
        token = "?token=<BANDIT_DASHBOARD_TOKEN>" if demo.dashboard_token else ""
        _say("dashboard", f"{dashboard}{token} (live while the worker runs)")
        stats = asyncio.run(drive(demo, experiment_id, seconds, rate, worker))
        print("\n" + "\n".join(report(stats, experiment_id)) + "\n", flush=True)
        print("\n".join(insights(demo, experiment_id, state / "report.png")) + "\n", flush=True)
        if args.keep_services:
            _keep_dashboard(worker, dashboard + token)
        return 1 if stats.problems() else 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping what the demo started", file=sys.stderr, flush=True)
        return 130
    finally:
        _say("worker", worker.stop_and_say())
        shutil.rmtree(worker.scratch, ignore_errors=True)
        if endpoints is not None and args.keep_services:
            _say("services", "left running (--keep-services): `bandit-stream services down`")
        elif endpoints is not None:
            down = local.down(settings, endpoints.started_kafka, endpoints.started_postgres)
            _say("services", f"stopped {', '.join(down)}" if down else "left as they were")
        _say("wall time", f"{time.monotonic() - began:.0f} s")
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)


if __name__ == "__main__":
    from streams.settings import get_settings

    _parser = argparse.ArgumentParser(prog="python -m streams.demo")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args(), get_settings()))
