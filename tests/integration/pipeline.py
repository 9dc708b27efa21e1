"""Helpers for end-to-end tests of the pipeline: a prepared environment, producing, reading."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from streams import kafka_clients
from streams.admin import ensure_topics
from streams.contracts import format_timestamp, validate
from streams.experiments import new_experiment_document
from streams.settings import Settings
from streams.sink.experiments import save_experiment
from streams.sink.migrations import migrate
from streams.topics import topic_name
from tests.integration.workers import FaustWorker

IPHONE_INSTAGRAM = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.18.84"
)
DESKTOP_CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


@dataclass
class Pipeline:
    settings: Settings
    tmp: Path

    def env(self) -> dict[str, str]:
        return self.settings.environment() | {
            "BANDIT_WEIGHTS_INTERVAL_S": "0.2",
            "BANDIT_WEIGHTS_MIN_CHANGE": "0",
        }

    def worker(self, name: str = "w1", extra: dict[str, str] | None = None) -> FaustWorker:
        return FaustWorker("streams.app", self.env() | (extra or {}), self.tmp / f"{name}.log")

    def topic(self, base: str) -> str:
        return topic_name(self.settings, base)


async def prepare(settings: Settings, tmp: Path, database_url: str) -> Pipeline:
    settings = settings.model_copy(update={"database_url": _secret(database_url)})
    await migrate(settings.database_dsn)
    await ensure_topics(settings)
    return Pipeline(settings, tmp)


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


async def create_experiment(p: Pipeline, experiment_id: str, **kwargs: Any) -> None:
    doc = new_experiment_document(
        experiment_id,
        kwargs.pop("variants", ["a", "b", "c"]),
        context_features=kwargs.pop("context_features", ["device", "source"]),
        **kwargs,
    )
    await save_experiment(p.settings, doc)


def visit(
    experiment_id: str,
    visitor_id: str,
    ua: str = IPHONE_INSTAGRAM,
    utm_source: str = "instagram",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "experiment_id": experiment_id,
        "visitor_id": visitor_id,
        "occurred_at": format_timestamp(datetime.now(UTC) - timedelta(seconds=1)),
        "context": {"user_agent": ua, "utm_source": utm_source, "country": "US"},
        **extra,
    }


def exposure(decision: dict[str, Any], variant: str | None = None) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "experiment_id": decision["experiment_id"],
        "visitor_id": decision["visitor_id"],
        "variant_id": variant or decision["variant_id"],
        "decision_id": decision["decision_id"],
        "segment_key": decision["segment_key"],
        "occurred_at": format_timestamp(datetime.now(UTC) - timedelta(milliseconds=500)),
    }


def conversion(decision: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "experiment_id": decision["experiment_id"],
        "visitor_id": decision["visitor_id"],
        "occurred_at": format_timestamp(datetime.now(UTC)),
    }


async def produce(p: Pipeline, base: str, items: list[tuple[str, bytes]]) -> None:
    """Send (key, raw value) pairs to a topic, all acknowledged."""
    producer = kafka_clients.producer(p.settings, acks="all", linger_ms=5)
    await producer.start()
    try:
        await kafka_clients.send_all(
            producer, p.topic(base), [(key.encode(), value) for key, value in items]
        )
    finally:
        await producer.stop()


async def produce_docs(p: Pipeline, base: str, docs: list[dict[str, Any]]) -> None:
    await produce(p, base, [(d["visitor_id"], orjson.dumps(d)) for d in docs])


async def read(
    p: Pipeline,
    base: str,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 60,
    contract: str | None = None,
) -> list[dict[str, Any]]:
    """Read a topic from the beginning until `until(docs)` holds; validate every document."""
    consumer = kafka_clients.consumer(
        p.settings,
        p.topic(base),
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    docs: list[dict[str, Any]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not until(docs) and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    doc = orjson.loads(r.value or b"null")
                    rejected = validate(contract or base, doc)
                    assert rejected is None, f"{base} record breaks its contract: {rejected}"
                    docs.append(doc)
    finally:
        await consumer.stop()
    return docs


def synthetic_exposures(
    experiment_id: str, segments: list[str], variants: list[str], n: int, seed: int
) -> list[dict[str, Any]]:
    """n exposures spread over segments and variants, each its own decision and visitor."""
    import random

    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(minutes=5)
    return [
        {
            "event_id": f"x-{seed}-{i}",
            "experiment_id": experiment_id,
            "visitor_id": f"visitor-{seed}-{i}",
            "variant_id": variants[i % len(variants)],
            "decision_id": f"d-{seed}-{i}",
            "segment_key": segments[rng.randrange(len(segments))],
            "occurred_at": format_timestamp(start + timedelta(milliseconds=i)),
        }
        for i in range(n)
    ]


def decisions_for(exposures: list[dict[str, Any]], variants: int = 3) -> list[dict[str, Any]]:
    """The decisions of record these exposures show (uniform draws, as before any weights)."""
    return [
        {
            "decision_id": e["decision_id"],
            "event_id": f"visit-{e['decision_id']}",
            "experiment_id": e["experiment_id"],
            "visitor_id": e["visitor_id"],
            "variant_id": e["variant_id"],
            "segment_key": e["segment_key"],
            "propensity": 1 / variants,
            "source": "uniform",
            "weights_version": 0,
            "decided_at": format_timestamp(
                datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00"))
                - timedelta(milliseconds=1)
            ),
        }
        for e in exposures
    ]


def conversions_for(exposures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"c-{e['event_id']}",
            "experiment_id": e["experiment_id"],
            "visitor_id": e["visitor_id"],
            "occurred_at": format_timestamp(
                datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00"))
                + timedelta(seconds=30)
            ),
        }
        for e in exposures
    ]
