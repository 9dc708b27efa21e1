"""(c) visit→decision latency at a paced, bounded offered load against a running worker.

A load client plays the web back end: it sends visits on schedule, and for each decision it
reads sends the exposure and, for ~5 %, a conversion, so the track stage is loaded too.
Decisions are read by a `read_uncommitted` and a `read_committed` reader in the same run;
the first seconds (the warm-up) are offered but not measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams import kafka_clients
from streams.bench.pipeline.environment import (
    Scratch,
    background,
    counted_in_postgres,
    reading,
    scratch,
)
from streams.bench.pipeline.options import Options
from streams.bench.pipeline.progress import BenchError, note, progress
from streams.bench.pipeline.traffic import (
    CONVERSION_SHARE,
    conversion_message,
    exposure_message,
    random_context,
    visit_message,
)
from streams.bench.pipeline.workers import POLL_S, Worker, pipeline_worker, running
from streams.settings import Settings
from streams.topics import CONVERSIONS, DECISIONS, EXPOSURES, VISITS

READERS = {"uncommitted": "read_uncommitted", "committed": "read_committed"}


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
    samples: dict[str, list[float]] = field(default_factory=dict)  # reader → ms

    def percentiles(self, reader: str) -> dict[str, float]:
        data = self.samples[reader]
        if len(data) < 2:
            msg = f"{reader}: only {len(data)} latency samples"
            raise BenchError(msg)
        cuts = statistics.quantiles(data, n=100, method="inclusive")
        return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


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
        self.conversions: deque[tuple[float, str]] = deque()  # (due, visitor)
        self.exposures_sent = 0
        self.conversions_sent = 0
        self.first_decided: float | None = None  # when the uncommitted reader read them
        self.last_decided = 0.0

    async def _send(self, base: str, visitor: str, value: bytes) -> None:
        topic = self.sc.topic(base)
        self.pending.append(await self.producer.send(topic, value, key=visitor.encode()))

    async def send_visit(self, i: int) -> None:
        visitor = f"visitor-{self.run}-{i}"
        event_id = str(uuid.uuid4())
        value = visit_message(event_id, visitor, datetime.now(UTC), random_context(self.rng))
        now = time.perf_counter()
        self.sent_at[event_id] = (now, now >= self.warmup_until)
        await self._send(VISITS, visitor, value)

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
        value = exposure_message(
            str(uuid.uuid4()),
            visitor,
            decision["variant_id"],
            decision["decision_id"],
            decision["segment_key"],
            datetime.now(UTC),
        )
        await self._send(EXPOSURES, visitor, value)
        self.exposures_sent += 1
        if self.rng.random() < CONVERSION_SHARE:
            self.conversions.append((time.perf_counter() + 0.5, visitor))

    async def send_due_conversions(self, flush: bool = False) -> None:
        now = time.perf_counter()
        while self.conversions and (flush or self.conversions[0][0] <= now):
            _, visitor = self.conversions.popleft()
            value = conversion_message(str(uuid.uuid4()), visitor, datetime.now(UTC), 25.0)
            await self._send(CONVERSIONS, visitor, value)
            self.conversions_sent += 1

    def complete(self) -> bool:
        return all(len(s) >= len(self.sent_at) for s in self.seen.values())

    async def confirm_sends(self) -> None:
        """Every send acknowledged, or the first failure raised."""
        results = await asyncio.wait_for(asyncio.gather(*self.pending, return_exceptions=True), 60)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            msg = f"(c) {len(failed)} sends failed, first: {failed[0]!r}"
            raise BenchError(msg)


async def _read_decisions(client: LoadClient, reader: str, consumer: AIOKafkaConsumer) -> None:
    while True:
        batch = await consumer.getmany(timeout_ms=50)
        now = time.perf_counter()
        docs = [orjson.loads(r.value or b"{}") for records in batch.values() for r in records]
        if docs:
            await client.on_decisions(reader, docs, now)


async def _offer_visits(
    client: LoadClient,
    worker: Worker,
    readers: list[asyncio.Task[None]],
    rate: float,
    total: int,
    t0: float,
    hard_stop: float,
) -> tuple[int, float, float]:
    """`total` visits at `rate` from `t0` on (until `hard_stop`): sent, offered/s, worst lag s."""
    sent, max_lag, t_last = 0, 0.0, t0
    while sent < total:
        now = time.perf_counter()
        if now > hard_stop:
            progress(f"(c) the sender fell behind: {sent:,}/{total:,} visits sent")
            break
        due = min(total, int((now - t0) * rate) + 1)
        if sent < due:
            max_lag = max(max_lag, now - (t0 + sent / rate))
        while sent < due:
            await client.send_visit(sent)
            sent += 1
            t_last = time.perf_counter()
        await client.send_due_conversions()
        for task in readers:
            if task.done():
                await task  # raises the reader's error
        worker.check_alive()
        delay = t0 + sent / rate - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    offered = (sent - 1) / (t_last - t0) if t_last > t0 else rate
    return sent, offered, max_lag


async def _wait_tracked(
    dsn: str, exposures: int, conversions: int, timeout: float
) -> tuple[int, int]:
    """Postgres counts once they match what the client sent, or when `timeout` is over."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.perf_counter() + timeout
        while True:
            counted, converted = await counted_in_postgres(conn)
            if (counted, converted) == (exposures, conversions):
                return counted, converted
            if time.perf_counter() > deadline:
                note(
                    f"(c) the track stage did not keep up: Postgres counts {counted:,}/"
                    f"{exposures:,} exposures and {converted:,}/{conversions:,} conversions "
                    f"{timeout:.0f} s after the load ended"
                )
                return counted, converted
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def measure_latency(
    base: Settings, opts: Options, workdir: Path, drain_timeout: float
) -> LatencyResult:
    async with (
        scratch(base, "latency", database=True) as sc,
        contextlib.AsyncExitStack() as stack,
    ):
        assert sc.dsn is not None
        worker = stack.enter_context(running(pipeline_worker(sc, workdir, "latency")))
        producer = await stack.enter_async_context(
            kafka_clients.producer(sc.settings, acks="all", linger_ms=0)
        )
        consumers = {
            name: await stack.enter_async_context(reading(sc.settings, sc.topic(DECISIONS), level))
            for name, level in READERS.items()
        }
        await worker.ready_at()
        total = max(2, int(opts.rate * opts.duration))
        warmup = min(3.0, opts.duration * 0.2)
        progress(
            f"(c) worker ready; offering {total:,} visits at {opts.rate:,.0f}/s "
            f"for {opts.duration:g} s (first {warmup:g} s not measured)"
        )
        t0 = time.perf_counter()
        client = LoadClient(sc, producer, warmup_until=t0 + warmup)
        readers = [
            await stack.enter_async_context(background(_read_decisions(client, name, consumer)))
            for name, consumer in consumers.items()
        ]
        hard_stop = t0 + opts.duration * 1.5 + 5
        sent, offered, max_lag = await _offer_visits(
            client, worker, readers, opts.rate, total, t0, hard_stop
        )
        drain_deadline = time.perf_counter() + drain_timeout
        while not client.complete() and time.perf_counter() < drain_deadline:
            worker.check_alive()
            await client.send_due_conversions()
            await asyncio.sleep(POLL_S)
        await client.send_due_conversions(flush=True)
        if not client.complete():
            note(
                "(c) decisions missing after the drain: "
                + ", ".join(f"{name} {len(s):,}/{sent:,}" for name, s in client.seen.items())
            )
        await client.confirm_sends()
        tracked = await _wait_tracked(
            sc.dsn, client.exposures_sent, client.conversions_sent, timeout=15
        )
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
