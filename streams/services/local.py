"""`services up | down | status | env`: configured services win, local ones fill the gaps.

KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL, when set, override everything: they are checked,
never started. What is not configured is started here, on 127.0.0.1, by the project itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streams.errors import ServiceError
from streams.services.kafka import LocalKafka, broker_answers
from streams.services.postgres import LocalPostgres, database_answers
from streams.settings import Settings


@dataclass(frozen=True)
class Endpoints:
    """Where the services are, and which of them this call started."""

    bootstrap_servers: str
    database_url: str
    started_kafka: bool
    started_postgres: bool

    def env_lines(self) -> list[str]:
        return [
            f"KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers}",
            f"DATABASE_URL={self.database_url}",
        ]


def up(settings: Settings) -> Endpoints:
    """Make both services reachable; start the local ones that are not configured."""
    started_kafka = started_postgres = False
    if settings.kafka_configured:
        if not asyncio.run(broker_answers(settings.bootstrap_servers)):
            msg = f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers} does not answer"
            raise ServiceError(msg)
    else:
        started_kafka = LocalKafka(settings).up().started_by_us
    if settings.database_configured:
        if not asyncio.run(database_answers(settings.database_dsn)):
            msg = "DATABASE_URL is set but does not accept connections"
            raise ServiceError(msg)
    else:
        started_postgres = LocalPostgres(settings).up().started_by_us
    return Endpoints(
        settings.bootstrap_servers, settings.database_dsn, started_kafka, started_postgres
    )


def down(settings: Settings, kafka: bool = True, postgres: bool = True) -> list[str]:
    """Stop the local services that `up` started (never configured ones); name them."""
    stopped = []
    if kafka and not settings.kafka_configured and LocalKafka(settings).down():
        stopped.append("kafka")
    if postgres and not settings.database_configured and LocalPostgres(settings).down():
        stopped.append("postgres")
    return stopped


def status_lines(settings: Settings) -> list[str]:
    lines = []
    if settings.kafka_configured:
        ok = asyncio.run(broker_answers(settings.bootstrap_servers))
        lines.append(f"kafka     configured  {settings.bootstrap_servers}  answers={ok}")
    else:
        k = LocalKafka(settings).status()
        state = f"running pid={k.pid}" if k.running else "stopped"
        lines.append(f"kafka     local       {k.bootstrap}  {state}  log={k.log}")
    if settings.database_configured:
        ok = asyncio.run(database_answers(settings.database_dsn))
        lines.append(f"postgres  configured  (DATABASE_URL)  answers={ok}")
    else:
        p = LocalPostgres(settings).status()
        state = f"running pid={p.pid}" if p.running else "stopped"
        lines.append(f"postgres  local       {p.dsn}  {state}  log={p.log}")
    return lines
