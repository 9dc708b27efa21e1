"""`bandit-stream bench learning`: how soon an exposure reaches the weights a replica reads.

One worker of the real pipeline on the real broker and Postgres (local services are started
when none are configured). Decisions and exposures of a default-policy experiment are sent
at a paced rate over a few segments; a reader follows the compacted `allocations` topic, as
every replica does. An exposure is *learned* when an allocation of its segment counts it (the
allocation's exposures reach the number sent up to it): latency = that record's arrival −
the exposure's send time. Path: track batch → outbox → segment owner → experiment owner's
snapshot → `allocations`. `BANDIT_WEIGHTS_MIN_CHANGE=0` so that every snapshot is published.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
from pydantic import SecretStr

from streams import kafka_clients
from streams.contracts import format_timestamp
from streams.experiments import new_experiment_document
from streams.settings import Settings
from streams.sink.experiments import save_experiment
from streams.topics import ALLOCATIONS, DECISIONS, EXPOSURES

EXPERIMENT_ID = "bench-learning"
SEGMENTS = tuple(
    f"device:{d}|source:{s}" for d in ("mobile", "desktop") for s in ("google", "direct")
)
VARIANTS = ("a", "b", "c")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=1000.0, help="exposures per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="paced traffic duration")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


async def _measure(settings: Settings, rate: float, seconds: float, workdir: Path) -> dict:
    from streams.bench.pipeline.environment import scratch
    from streams.bench.pipeline.workers import pipeline_worker, running

    async with scratch(settings, "learning", database=True) as sc:
        await save_experiment(
            sc.settings,
            new_experiment_document(
                EXPERIMENT_ID, list(VARIANTS), context_features=["device", "source"]
            ),
        )
        worker = pipeline_worker(sc, workdir, "learning")
        worker.env["BANDIT_WEIGHTS_MIN_CHANGE"] = "0"
        sent: dict[str, list[float]] = {s: [] for s in SEGMENTS}
        learned: list[float] = []
        matched = dict.fromkeys(SEGMENTS, 0)
        stop = asyncio.Event()

        async def follow() -> None:
            consumer = kafka_clients.consumer(
                sc.settings, sc.topic(ALLOCATIONS), auto_offset_reset="earliest", group_id=None
            )
            await consumer.start()
            try:
                while not stop.is_set():
                    for records in (await consumer.getmany(timeout_ms=100)).values():
                        now = time.perf_counter()
                        for r in records:
                            doc = orjson.loads(r.value or b"null")
                            seg = doc.get("segment_key")
                            if seg not in sent:
                                continue
                            counted = sum(doc["exposures"].values())
                            while matched[seg] < min(counted, len(sent[seg])):
                                learned.append(now - sent[seg][matched[seg]])
                                matched[seg] += 1
            finally:
                await consumer.stop()

        with running(worker):
            await worker.ready_at()
            reader = asyncio.create_task(follow())
            async with kafka_clients.producer(sc.settings, acks="all", linger_ms=2) as producer:
                start, i = time.perf_counter(), 0
                while (elapsed := time.perf_counter() - start) < seconds:
                    due = int(elapsed * rate)
                    pending = []
                    while i < due:
                        seg = SEGMENTS[i % len(SEGMENTS)]
                        visitor, decision = f"v-{i}", uuid.uuid4().hex
                        now = format_timestamp(datetime.now(UTC))
                        d = {
                            "decision_id": decision,
                            "event_id": f"e-{i}",
                            "experiment_id": EXPERIMENT_ID,
                            "visitor_id": visitor,
                            "variant_id": VARIANTS[i % 3],
                            "segment_key": seg,
                            "propensity": 1 / 3,
                            "source": "uniform",
                            "weights_version": 0,
                            "decided_at": now,
                        }
                        x = {
                            "event_id": f"x-{i}",
                            "experiment_id": EXPERIMENT_ID,
                            "visitor_id": visitor,
                            "variant_id": d["variant_id"],
                            "decision_id": decision,
                            "segment_key": seg,
                            "occurred_at": now,
                        }
                        key = visitor.encode()
                        pending.append(
                            await producer.send(sc.topic(DECISIONS), orjson.dumps(d), key=key)
                        )
                        pending.append(
                            await producer.send(sc.topic(EXPOSURES), orjson.dumps(x), key=key)
                        )
                        sent[seg].append(time.perf_counter())
                        i += 1
                    if pending:
                        await asyncio.gather(*pending)
                    await asyncio.sleep(0.005)
            deadline = time.perf_counter() + 60
            while len(learned) < i and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
            stop.set()
            await reader
        values = np.array(learned) * 1000
        return {
            "rate": rate,
            "exposures": i,
            "learned": len(learned),
            "p50_ms": float(np.percentile(values, 50)) if len(values) else None,
            "p99_ms": float(np.percentile(values, 99)) if len(values) else None,
            "max_ms": float(values.max()) if len(values) else None,
        }


def main(args: argparse.Namespace) -> int:
    from streams.services import local
    from streams.settings import get_settings

    settings = get_settings()
    endpoints = local.up(settings)
    base = settings.model_copy(
        update={
            "kafka_bootstrap_servers": endpoints.bootstrap_servers,
            "database_url": SecretStr(endpoints.database_url),
        }
    )
    try:
        with tempfile.TemporaryDirectory(prefix="bandit-bench-learning-") as tmp:
            result = asyncio.run(_measure(base, args.rate, args.seconds, Path(tmp)))
    finally:
        with contextlib.suppress(Exception):
            local.down(settings, endpoints.started_kafka, endpoints.started_postgres)
    if args.json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        return 0
    print(
        "learning latency, exposure sent → counted in a published allocation "
        f"({result['rate']:.0f}/s)"
    )
    print(f"  exposures {result['exposures']:,}, learned {result['learned']:,}")
    print(
        f"  p50 {result['p50_ms']:.0f} ms   p99 {result['p99_ms']:.0f} ms   "
        f"max {result['max_ms']:.0f} ms"
    )
    return 0 if result["learned"] == result["exposures"] else 1
