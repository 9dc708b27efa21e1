"""The synthetic traffic: visits, their exposures and ~5 % conversions, as raw Kafka records.

The backlog of (a) and (b) is built up front from a seeded generator; the load client of (c)
builds the same three messages one at a time, from the decisions it reads. Both go through
the `*_message` builders below, so the pipeline sees one shape of each event.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streams import kafka_clients
from streams.contracts import format_timestamp
from streams.core.context import extract_context
from streams.core.decide import deterministic_uniform
from streams.core.segments import segment_key
from streams.pipeline.decide import decision_id
from streams.pipeline.replica import uniform_entry
from streams.settings import Settings
from streams.topics import CONVERSIONS, EXPOSURES, VISITS, topic_name

EXPERIMENT_ID = "bench-pipeline"
VARIANTS = ("a", "b", "c")
CONTEXT_FEATURES = ("device", "source")
CONVERSION_SHARE = 0.05
INPUTS = (VISITS, EXPOSURES, CONVERSIONS)

USER_AGENTS = (
    # iPhone, Instagram's in-app browser
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.18.84",
    # Android, Chrome
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36",
    # Windows, Chrome
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    # Mac, Safari
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
)
UTM_SOURCES = ("instagram", "google", "facebook", None)
COUNTRIES = (("US", "en-US"), ("GB", "en-GB"), ("DE", "de-DE"), ("FR", "fr-FR"), ("BR", "pt-BR"))

Record = tuple[bytes, bytes]  # key, value


def random_context(rng: random.Random) -> dict[str, Any]:
    country, language = rng.choice(COUNTRIES)
    ctx: dict[str, Any] = {
        "user_agent": rng.choice(USER_AGENTS),
        "country": country,
        "language": language,
    }
    source = rng.choice(UTM_SOURCES)
    if source is not None:
        ctx["utm_source"] = source
        ctx["utm_medium"] = "paid" if source == "google" else "social"
    return ctx


def visit_message(event_id: str, visitor: str, at: datetime, context: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "experiment_id": EXPERIMENT_ID,
            "visitor_id": visitor,
            "occurred_at": format_timestamp(at),
            "context": context,
        }
    )


def exposure_message(
    event_id: str, visitor: str, variant_id: str, decision: str, segment: str, at: datetime
) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "experiment_id": EXPERIMENT_ID,
            "visitor_id": visitor,
            "variant_id": variant_id,
            "decision_id": decision,
            "segment_key": segment,
            "occurred_at": format_timestamp(at),
        }
    )


def conversion_message(event_id: str, visitor: str, at: datetime, value: float) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "experiment_id": EXPERIMENT_ID,
            "visitor_id": visitor,
            "occurred_at": format_timestamp(at),
            "value": value,
        }
    )


@dataclass(frozen=True)
class Backlog:
    """The raw messages of the backlog, per input topic, in production order."""

    records: dict[str, list[Record]]

    @property
    def visits(self) -> int:
        return len(self.records[VISITS])

    @property
    def exposures(self) -> int:
        return len(self.records[EXPOSURES])

    @property
    def conversions(self) -> int:
        return len(self.records[CONVERSIONS])

    @property
    def events(self) -> int:
        return self.visits + self.exposures + self.conversions


def _seeded_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_backlog(visits: int, seed: int = 7) -> Backlog:
    """N visits of N visitors, an exposure each, ~5 % converting (a minute later)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    start = datetime.now(UTC) - timedelta(minutes=15)
    out: dict[str, list[Record]] = {base: [] for base in INPUTS}
    converting = set(rng.sample(range(visits), max(1, round(visits * CONVERSION_SHARE))))
    for i in range(visits):
        visitor = f"visitor-{run}-{i}"
        key = visitor.encode()
        event_id = _seeded_uuid(rng)
        at = start + timedelta(milliseconds=10 * i)
        ctx = random_context(rng)
        out[VISITS].append((key, visit_message(event_id, visitor, at, ctx)))
        exposed_at = at + timedelta(milliseconds=300)
        segment = segment_key(extract_context(ctx, at), CONTEXT_FEATURES)
        exposure = exposure_message(
            _seeded_uuid(rng),
            visitor,
            _decided_variant(event_id),
            decision_id(EXPERIMENT_ID, event_id),
            segment,
            exposed_at,
        )
        out[EXPOSURES].append((key, exposure))
        if i in converting:
            converted_at = exposed_at + timedelta(seconds=60)
            value = conversion_message(
                _seeded_uuid(rng), visitor, converted_at, round(rng.uniform(5, 120), 2)
            )
            out[CONVERSIONS].append((key, value))
    return Backlog(out)


def _decided_variant(event_id: str) -> str:
    """The variant the service decides for this visit of the uniform bench experiment."""
    index, _ = uniform_entry(VARIANTS).weights.choose(
        deterministic_uniform(EXPERIMENT_ID, event_id)
    )
    return VARIANTS[index]


async def produce_backlog(settings: Settings, backlog: Backlog) -> float:
    """Every record acknowledged (acks=all), visits then exposures then conversions: seconds."""
    t0 = time.perf_counter()
    async with kafka_clients.producer(
        settings,
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
    ) as producer:
        for base in INPUTS:
            sending = kafka_clients.send_all(
                producer, topic_name(settings, base), backlog.records[base]
            )
            await asyncio.wait_for(sending, 120)
    return time.perf_counter() - t0
