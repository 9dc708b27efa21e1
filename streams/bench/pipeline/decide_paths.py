"""(d) The other two ways to decide, in the same run: in process and over HTTP.

Against one worker on its own topics and database: a paced, bounded load of `POST /decide`
requests (one visit each) goes to the worker's web server on 127.0.0.1, on keep-alive
connections, each request timed until its answer; then a `DecisionClient` decides a batch
of visits in a tight loop (each call timed: first with a few user agents, parsed once and
then cached, then with a user agent never seen before each time), publishing in the
background.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from streams.bench.pipeline.environment import scratch
from streams.bench.pipeline.options import Options
from streams.bench.pipeline.progress import BenchError, note, progress
from streams.bench.pipeline.traffic import USER_AGENTS, random_context, visit_message
from streams.bench.pipeline.workers import Worker, pipeline_worker, running
from streams.client import DecisionClient
from streams.settings import Settings

CLIENT_WARMUP = 500  # decisions before the timed ones (caches, first allocations)
UNCACHED_SHARE = 10  # 1 in UNCACHED_SHARE of the client's visits again, with new UAs
SETTLE_S = 2.0  # between the HTTP load and the client's timed loop


def _cuts(samples: list[float], what: str) -> dict[str, float]:
    if len(samples) < 2:
        msg = f"{what}: only {len(samples)} samples"
        raise BenchError(msg)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98]}


@dataclass
class ClientResult:
    decisions: int
    seconds: float
    cached_us: list[float] = field(default_factory=list)
    uncached_us: list[float] = field(default_factory=list)
    acknowledged: int = 0

    @property
    def per_s(self) -> float:
        return self.decisions / self.seconds

    def cached(self) -> dict[str, float]:
        return _cuts(self.cached_us, "client decide (cached UA)")

    def uncached(self) -> dict[str, float]:
        return _cuts(self.uncached_us, "client decide (new UA)")


@dataclass
class HttpResult:
    offered_per_s: float
    sent: int
    answered: int
    failed: int
    seconds: float
    warmup_s: float
    samples_ms: list[float] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def percentiles(self) -> dict[str, float]:
        return _cuts(self.samples_ms, "POST /decide")


def _visit(rng: random.Random, run: str, i: int, user_agent: str | None = None) -> bytes:
    context = random_context(rng)
    if user_agent is not None:
        context["user_agent"] = user_agent
    return visit_message(str(uuid.uuid4()), f"visitor-{run}-{i}", datetime.now(UTC), context)


def measure_client(client: DecisionClient, visits: int) -> ClientResult:
    """Time `client.decide` per call: `visits` with the bench's 4 user agents, then a tenth
    as many with a user agent of their own (the parser's cache misses)."""
    rng = random.Random(3)
    run = uuid.uuid4().hex[:8]
    cached = [_visit(rng, run, i) for i in range(visits + CLIENT_WARMUP)]
    fresh = [
        _visit(rng, run, visits + CLIENT_WARMUP + i, f"{USER_AGENTS[i % 4]} BenchApp/{run}.{i}")
        for i in range(max(2, visits // UNCACHED_SHARE))
    ]
    clock = time.perf_counter_ns
    for raw in cached[:CLIENT_WARMUP]:
        client.decide(raw)
    gc.collect()
    cached_us: list[float] = []
    t0 = clock()
    for raw in cached[CLIENT_WARMUP:]:
        start = clock()
        client.decide(raw)
        cached_us.append((clock() - start) / 1000)
    seconds = (clock() - t0) / 1e9
    uncached_us: list[float] = []
    for raw in fresh:
        start = clock()
        client.decide(raw)
        uncached_us.append((clock() - start) / 1000)
    return ClientResult(visits, seconds, cached_us, uncached_us)


async def measure_http(worker: Worker, rate: float, duration: float) -> HttpResult:
    """`rate` × `duration` requests (one visit each), paced, to the worker on 127.0.0.1."""
    url = f"http://127.0.0.1:{worker.web_port}/decide"
    total = max(2, int(rate * duration))
    warmup = min(2.0, duration * 0.2)
    rng = random.Random(5)
    run = uuid.uuid4().hex[:8]
    samples: list[float] = []
    failures: list[str] = []
    answered = 0
    last_answer = 0.0
    headers = {"content-type": "application/json"}

    async def one(session: aiohttp.ClientSession, body: bytes, measured: bool) -> None:
        nonlocal answered, last_answer
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures.append(repr(exc))
            return
        now = time.perf_counter()
        if status != 200:
            failures.append(f"HTTP {status}")
            return
        answered += 1
        last_answer = now
        if measured:
            samples.append((now - start) * 1000)

    connector = aiohttp.TCPConnector(limit=128)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        hard_stop = t0 + duration * 1.5 + 5
        sent = 0
        t_last = t0
        while sent < total:
            now = time.perf_counter()
            if now > hard_stop:
                progress(f"(d) the HTTP load fell behind: {sent:,}/{total:,} requests sent")
                break
            due = min(total, int((now - t0) * rate) + 1)
            while sent < due:
                body = _visit(rng, run, sent)
                task = asyncio.create_task(one(session, body, now >= t0 + warmup))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
                t_last = time.perf_counter()
            worker.check_alive()
            await asyncio.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))
        if tasks:
            await asyncio.wait(set(tasks), timeout=15)
        for task in list(tasks):
            task.cancel()
    if failures:
        note(f"(d) {len(failures)} of {sent:,} POST /decide failed, first: {failures[0]}")
    offered = (sent - 1) / (t_last - t0) if t_last > t0 else rate
    return HttpResult(
        offered_per_s=offered,
        sent=sent,
        answered=answered,
        failed=len(failures),
        seconds=max(last_answer - t0, 1e-9),
        warmup_s=warmup,
        samples_ms=samples,
    )


async def measure_decide_paths(
    base: Settings, opts: Options, workdir: Path
) -> tuple[ClientResult, HttpResult]:
    async with (
        scratch(base, "paths", database=True) as sc,
        contextlib.AsyncExitStack() as stack,
    ):
        worker = stack.enter_context(running(pipeline_worker(sc, workdir, "paths")))
        client = await stack.enter_async_context(DecisionClient(sc.settings))
        await worker.ready_at()
        await client.ready(timeout=60)
        # HTTP first: the client's burst of decisions would keep the worker's track stage
        # busy recording them while the requests are timed
        progress(
            f"(d) POST /decide: {opts.http_rate:,.0f} requests/s offered for "
            f"{opts.http_duration:g} s"
        )
        http_result = await measure_http(worker, opts.http_rate, opts.http_duration)
        await asyncio.sleep(SETTLE_S)  # the worker records the last decisions it sent
        progress(f"(d) client: deciding {opts.client_visits:,} visits in process")
        client_result = measure_client(client, opts.client_visits)
        if not await client.flush(60):
            note("(d) the client's decisions were not all acknowledged within 60 s")
        client_result.acknowledged = client.stats.acknowledged
    return client_result, http_result
