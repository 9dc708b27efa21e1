"""(b) The references: the backlog of (a) through a plain aiokafka loop and a naive Faust app.

Each in its own topics, without a database. The plain loop is the floor of a consume→produce
on this broker; the naive app (`streams.bench.faust_reference`: a Table update and a
`topic.send` per event) is what Faust costs when used the way its tutorials do.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from streams import kafka_clients
from streams.bench.pipeline.environment import Arrivals, background, reading, scratch
from streams.bench.pipeline.progress import BenchError
from streams.bench.pipeline.traffic import INPUTS, Backlog, produce_backlog
from streams.bench.pipeline.workers import POLL_S, Worker, running
from streams.settings import Settings
from streams.topics import DECISIONS


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
        await produce_backlog(sc.settings, backlog)
        output = sc.topic(DECISIONS)
        async with (
            kafka_clients.consumer(
                sc.settings,
                *(sc.topic(b) for b in INPUTS),
                group_id=f"{sc.prefix}plain",
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            ) as consumer,
            kafka_clients.producer(sc.settings, acks="all", linger_ms=0) as producer,
        ):
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
    assert t_first is not None
    return ReferenceResult(done, t_end - t_first)


async def measure_faust_reference(
    base: Settings, backlog: Backlog, workdir: Path, timeout: float
) -> ReferenceResult:
    """The naive Faust app on the backlog, timed like (a): readiness to the last output."""
    async with scratch(base, "faust-reference", database=False) as sc:
        await produce_backlog(sc.settings, backlog)
        output = sc.topic(DECISIONS)
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": sc.settings.bootstrap_servers,
            "BENCH_REF_APP_ID": sc.settings.app_id,
            "BENCH_REF_INPUTS": ",".join(sc.topic(b) for b in INPUTS),
            "BENCH_REF_OUTPUT": output,
            "BENCH_REF_PARTITIONS": str(sc.settings.partitions),
            "BENCH_REF_COMMIT_INTERVAL_S": str(sc.settings.commit_interval_s),
        }
        worker = Worker("streams.bench.faust_reference", env, workdir, f"faust-ref-{sc.token}")
        outputs = Arrivals(backlog.events)
        async with (
            reading(sc.settings, output) as reader,
            background(outputs.read(reader)) as counter,
        ):
            with running(worker):
                t_ready = await worker.ready_at()
                deadline = t_ready + timeout
                while not counter.done():
                    worker.check_alive()
                    if time.perf_counter() > deadline:
                        msg = (
                            f"faust reference: {outputs.count:,}/{backlog.events:,} outputs "
                            f"in {timeout:.0f} s; log {worker.log}"
                        )
                        raise BenchError(msg)
                    await asyncio.sleep(POLL_S)
                await counter
    assert outputs.done is not None
    return ReferenceResult(backlog.events, outputs.done - outputs.measured_from(t_ready))
