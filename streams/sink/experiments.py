"""The experiments registry: Postgres is the record, the compacted topic is how workers see it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from streams import kafka_clients
from streams.errors import ExperimentError
from streams.experiments import Experiment, experiment_from_document
from streams.settings import Settings
from streams.topics import EXPERIMENTS, topic_name


async def _publish(settings: Settings, experiment: Experiment) -> None:
    producer = kafka_clients.producer(settings, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topic_name(settings, EXPERIMENTS),
            orjson.dumps(experiment.to_document()),
            key=experiment.experiment_id.encode(),
        )
    finally:
        await producer.stop()


async def save_experiment(settings: Settings, doc: dict[str, Any]) -> Experiment:
    """Validate, insert into Postgres (a new id only) and publish to every worker."""
    experiment = experiment_from_document(doc)
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        async with conn.transaction():
            inserted = await conn.fetchval(
                """
                INSERT INTO experiments (experiment_id, name, status, context_features, policy,
                    attribution_window_seconds, holdout_share, sticky, version)
                VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9)
                ON CONFLICT (experiment_id) DO NOTHING RETURNING 1
                """,
                experiment.experiment_id,
                experiment.name,
                experiment.status,
                list(experiment.context_features),
                orjson.dumps(dict(experiment.policy)).decode(),
                experiment.attribution_window_seconds,
                experiment.holdout_share,
                experiment.sticky,
                experiment.version,
            )
            if not inserted:
                msg = f"experiment {experiment.experiment_id!r} exists already"
                raise ExperimentError(msg)
            await conn.executemany(
                "INSERT INTO variants (experiment_id, variant_id, name, position) "
                "VALUES ($1, $2, $3, $4)",
                [
                    (experiment.experiment_id, v, n, i)
                    for i, (v, n) in enumerate(
                        zip(experiment.variant_ids, experiment.variant_names, strict=True)
                    )
                ],
            )
            await _publish(settings, experiment)
    finally:
        await conn.close()
    return experiment


async def load_experiments(settings: Settings) -> list[Experiment]:
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        rows = await conn.fetch(
            """
            SELECT e.*, array_agg(v.variant_id ORDER BY v.position) AS variant_ids,
                   array_agg(v.name ORDER BY v.position) AS variant_names
            FROM experiments e JOIN variants v USING (experiment_id)
            GROUP BY e.experiment_id ORDER BY e.created_at
            """
        )
    finally:
        await conn.close()
    return [
        experiment_from_document(
            {
                "experiment_id": r["experiment_id"],
                "name": r["name"],
                "status": r["status"],
                "variants": [
                    {"variant_id": v, **({"name": n} if n else {})}
                    for v, n in zip(r["variant_ids"], r["variant_names"], strict=True)
                ],
                "context_features": list(r["context_features"]),
                "policy": orjson.loads(r["policy"]),
                "attribution_window_seconds": r["attribution_window_seconds"],
                "holdout_share": r["holdout_share"],
                "sticky": r["sticky"],
                "version": r["version"],
                "created_at": _stamp(r["created_at"]),
                "updated_at": _stamp(r["updated_at"]),
            }
        )
        for r in rows
    ]


def _stamp(dt: datetime) -> str:
    from streams.contracts import format_timestamp

    return format_timestamp(dt.astimezone(UTC))


async def set_status(settings: Settings, experiment_id: str, status: str) -> Experiment:
    """pause / stop / resume: bump the version, update Postgres, publish."""
    current = next(
        (e for e in await load_experiments(settings) if e.experiment_id == experiment_id), None
    )
    if current is None:
        msg = f"no experiment {experiment_id!r}"
        raise ExperimentError(msg)
    changed = current.with_status(status, datetime.now(UTC))
    conn = await asyncpg.connect(settings.database_dsn)
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE experiments SET status = $2, version = $3, updated_at = now() "
                "WHERE experiment_id = $1",
                experiment_id,
                changed.status,
                changed.version,
            )
            await _publish(settings, changed)
    finally:
        await conn.close()
    return changed
