"""Shared fixtures: the real Kafka broker and Postgres every integration test talks to.

Where the services come from, in order: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set; else
testcontainers when a Docker engine answers; else the project's own local services (started
here and stopped at the end if this session started them). There is no skip: a service that
cannot be had makes the integration tests error, in CI and everywhere else.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from streams.settings import Settings


@dataclass(frozen=True)
class Services:
    bootstrap_servers: str
    database_url: str


def _docker_engine_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    try:
        import docker

        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    configured = Settings()
    if configured.kafka_configured and configured.database_configured:
        yield Services(configured.bootstrap_servers, configured.database_dsn)
        return
    if not (configured.kafka_configured or configured.database_configured) and (
        _docker_engine_answers()
    ):
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        with (
            KafkaContainer("apache/kafka:4.1.1").with_kraft() as kafka,
            PostgresContainer("postgres:16", driver=None) as pg,
        ):
            yield Services(kafka.get_bootstrap_server(), pg.get_connection_url())
        return
    from streams.services import local

    endpoints = local.up(configured)
    try:
        yield Services(endpoints.bootstrap_servers, endpoints.database_url)
    finally:
        local.down(configured, kafka=endpoints.started_kafka, postgres=endpoints.started_postgres)


@pytest.fixture
def unique() -> str:
    """A short unique token for topic prefixes, group ids and app ids of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(services: Services, unique: str, tmp_path: os.PathLike[str]) -> Iterator[Settings]:
    """Settings pointing at the real services, with topics and app id unique to the test.

    The test's topics (its prefix, and faust's internal ones named after its app id) are
    deleted afterwards: a broker that outlives the session (the local one keeps its data,
    a configured one is shared) would otherwise gain ~40 partitions per test, for ever; at
    ~16,000 the local broker's 512 MB heap ran out.
    """
    s = Settings(
        KAFKA_BOOTSTRAP_SERVERS=services.bootstrap_servers,
        DATABASE_URL=services.database_url,
        BANDIT_TOPIC_PREFIX=f"t{unique}.",
        BANDIT_APP_ID=f"app-{unique}",
        BANDIT_PARTITIONS=4,
    )
    yield s
    asyncio.run(_delete_topics(s, (s.topic_prefix, s.app_id)))


async def _delete_topics(settings: Settings, prefixes: tuple[str, ...]) -> None:
    from streams import kafka_clients

    admin = kafka_clients.admin(settings)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if names:
            await admin.delete_topics(names)
    finally:
        await admin.close()


@pytest.fixture
def fresh_database(services: Services, unique: str) -> Iterator[str]:
    """A new, empty database for one test (dropped afterwards)."""
    import asyncpg

    base, _, _ = services.database_url.rpartition("/")
    name = f"test_{unique}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(f"{base}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
