"""Where each measurement runs: its own topics and database, and how it reads them.

Every measurement gets fresh topics (prefix `bench<token>.`) and, if it runs the pipeline,
a fresh migrated database (`bench_<token>`) holding the experiment. Both are removed on the
way out, whatever the measurement raised, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from streams import kafka_clients
from streams.admin import ensure_topics
from streams.bench.pipeline.progress import BenchError, progress
from streams.bench.pipeline.traffic import CONTEXT_FEATURES, EXPERIMENT_ID, VARIANTS
from streams.experiments import new_experiment_document
from streams.settings import Settings, get_settings
from streams.sink.experiments import save_experiment
from streams.sink.migrations import migrate
from streams.topics import topic_name


def loopback_only(bootstrap_servers: str) -> None:
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


# --- scratch topics and database --------------------------------------------------------


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
    admin = kafka_clients.admin(get_settings(), bootstrap_servers=bootstrap)
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
    """Fresh topics (and a fresh migrated database with the experiment), removed on the way out."""
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
        if database:
            # uniform: the backlog's exposures show the service's own decisions, which it
            # can compute in advance only while every weight is uniform (traffic.py)
            doc = new_experiment_document(
                EXPERIMENT_ID,
                list(VARIANTS),
                context_features=list(CONTEXT_FEATURES),
                policy={"name": "uniform"},
            )
            await save_experiment(settings, doc)
        yield Scratch(token, settings, dsn)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_delete_topics(base.bootstrap_servers, prefix), 30)
        if created:
            try:
                await _admin_sql(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # reported, never hides the measurement's own error
                progress(f"could not drop database {name}: {exc}")


async def counted_in_postgres(conn: asyncpg.Connection) -> tuple[int, int]:
    """(exposures, conversions) in the learned counts (`variant_segment_state`); records
    that wait (`pending_events`) are not counted yet."""
    row = await conn.fetchrow(
        "SELECT coalesce(sum(exposures), 0)::bigint AS e, "
        "coalesce(sum(conversions), 0)::bigint AS c FROM variant_segment_state"
    )
    assert row is not None
    return int(row["e"]), int(row["c"])


# --- reading an output topic ------------------------------------------------------------


@contextlib.asynccontextmanager
async def reading(
    settings: Settings, topic: str, isolation_level: str = "read_uncommitted"
) -> AsyncIterator[AIOKafkaConsumer]:
    """A reader of every partition of `topic` from its start (no group), stopped on exit."""
    reader = kafka_clients.consumer(
        settings,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
        # aiokafka keeps one fetch in flight per broker: a partition drained meanwhile waits
        # for it, so the readers' own wait bounds what they add to a measured latency
        fetch_max_wait_ms=10,
    )
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        yield reader
    finally:
        await reader.stop()


@dataclass
class Arrivals:
    """What a reader has read of an output so far: how many, and when the first and last came.

    With `distinct`, records count once per `event_id` (a redelivered decision is not news).
    """

    expected: int
    distinct: bool = False
    count: int = 0
    first: float | None = None  # perf_counter() of the first non-empty batch
    done: float | None = None  # perf_counter() once `expected` were read
    _event_ids: set[str] = field(default_factory=set)

    async def read(self, reader: AIOKafkaConsumer) -> None:
        while self.count < self.expected:
            batch = await reader.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                if records and self.first is None:
                    self.first = now
                if self.distinct:
                    self._event_ids.update(
                        orjson.loads(r.value or b"{}").get("event_id", "") for r in records
                    )
                    self.count = len(self._event_ids)
                else:
                    self.count += len(records)
        self.done = time.perf_counter()

    def measured_from(self, ready: float) -> float:
        """When the measurement starts: the worker's readiness, or its first output if earlier."""
        return ready if self.first is None else min(ready, self.first)


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None]) -> AsyncIterator[asyncio.Task[None]]:
    """`coro` as a task, cancelled (and its error swallowed) on the way out."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
