"""`bandit-stream check`: prove the foundation works end to end, in a few seconds.

Services reachable, migrations applied, topics created, one message through Kafka (produce,
then consume it back in a fresh consumer group) and one row through Postgres.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import orjson
from aiokafka import TopicPartition

from streams import kafka_clients
from streams.admin import ensure_topics
from streams.errors import ServiceError
from streams.settings import Settings
from streams.sink.migrations import migrate
from streams.topics import SELFCHECK, topic_name


@dataclass
class CheckReport:
    lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, step: str, outcome: str) -> None:
        self.lines.append((step, outcome))

    def render(self) -> str:
        width = max(len(step) for step, _ in self.lines)
        return "\n".join(f"  {step:<{width}}  {outcome}" for step, outcome in self.lines)


async def run_check(settings: Settings) -> CheckReport:
    report = CheckReport()
    t0 = time.perf_counter()
    applied = await migrate(settings.database_dsn)
    report.add("migrations", f"{len(applied)} applied now ({', '.join(applied) or 'up to date'})")
    created = await ensure_topics(settings)
    report.add("topics", f"{len(created)} created, prefix {settings.topic_prefix!r}")
    report.add("kafka round trip", await _kafka_round_trip(settings))
    report.add("postgres round trip", await _postgres_round_trip(settings.database_dsn))
    report.add("total", f"{(time.perf_counter() - t0) * 1000:.0f} ms")
    return report


async def _kafka_round_trip(settings: Settings) -> str:
    topic = topic_name(settings, SELFCHECK)
    token = uuid.uuid4().hex
    started = time.perf_counter()
    producer = kafka_clients.producer(settings, acks="all")
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, orjson.dumps({"token": token}))
    finally:
        await producer.stop()
    consumer = kafka_clients.consumer(
        settings,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, meta.partition)
        consumer.assign([tp])
        consumer.seek(tp, meta.offset)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                if orjson.loads(record.value or b"{}").get("token") == token:
                    ms = (time.perf_counter() - started) * 1000
                    return f"ok: offset {meta.offset} read back in {ms:.0f} ms"
    finally:
        await consumer.stop()
    msg = f"the message written to {topic} was not read back within 20 s"
    raise ServiceError(msg)


async def _postgres_round_trip(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.execute("CREATE TEMP TABLE selfcheck (token text PRIMARY KEY)")
        token = uuid.uuid4().hex
        await conn.execute("INSERT INTO selfcheck VALUES ($1)", token)
        back = await conn.fetchval("SELECT token FROM selfcheck WHERE token = $1", token)
        if back != token:
            msg = "the row written to Postgres was not read back"
            raise ServiceError(msg)
        version = await conn.fetchval("SHOW server_version")
        return f"ok: PostgreSQL {version}, {(time.perf_counter() - started) * 1000:.0f} ms"
    finally:
        await conn.close()
