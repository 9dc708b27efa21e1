"""`bandit-stream bench faults`: the fault model of issue 17, on the real broker and Postgres.

Each scenario runs on its own topics and database, with workers as subprocesses, and checks
the counts of `variant_segment_state` against what its traffic must give, per (segment,
variant): exposures, first conversions and repeats.

- `fuzz`: bad events (seeded) of every kind interleaved with valid decisions, exposures,
  conversions and visits; every bad one dead-lettered exactly once with a reason it allows
  (matched by source topic, partition and offset), no valid one, the worker never exits.
- `postgres-outage`: a private Postgres stopped 30 s under live traffic; decisions go on,
  the worker is not restarted, a few ERROR lines only.
- `broker-restart`: a private broker restarted while the worker drains a backlog.
- `sigterm-outage`: SIGTERM while a batch waits for Postgres ends the worker in bounded time;
  a new worker makes the counts exact once Postgres is back.
- `rebalance`: a second worker joins under live traffic, then the first leaves by SIGTERM;
  one decision per visit (a replayed decision must be the same decision).
- `hot-segment`: two workers, one hot segment and dozens of small ones; no deadlock in the
  (private) Postgres server's log nor in the workers'.

`tests/integration/test_faults.py` runs these at scale 1 and asserts on each `Result`;
`bandit-stream bench faults [--json] [--scale N]` runs them larger and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from pydantic import SecretStr

from streams import kafka_clients
from streams.admin import ensure_topics
from streams.agents.plain import STAGES
from streams.contracts import format_timestamp
from streams.core.segments import SEGMENT_VOCABULARIES, segment_key
from streams.experiments import new_experiment_document
from streams.services import process
from streams.services.kafka import LocalKafka
from streams.services.postgres import LocalPostgres
from streams.services.worker import WorkerProcess
from streams.settings import Settings
from streams.sink.experiments import save_experiment
from streams.sink.migrations import migrate
from streams.topics import (
    CONVERSIONS,
    DEADLETTER,
    DECISIONS,
    EXPOSURES,
    SEGMENT_DELTAS,
    VISITS,
    topic_name,
)

VARIANTS = ("a", "b", "c")
FEATURES = ("device", "source")
SEGMENTS = sorted(
    segment_key({"device": d, "source": s}, FEATURES)
    for d in SEGMENT_VOCABULARIES["device"]
    for s in SEGMENT_VOCABULARIES["source"]
)
WINDOW_S = 300  # attribution window of the scenarios' experiments
WAITS = {"BANDIT_WAIT_GRACE_S": "2", "BANDIT_UNKNOWN_EXPERIMENT_WAIT_S": "3"}
BAD_SEGMENTS = (
    "*", "", "all|device:mobile", "device:mobile|device:mobile", "source:google|device:mobile",
    "device:spaceship|source:google", "no-colon-here", "device:mobile|", "DEVICE:mobile",
    "device:mobile|source:google|extra",
)  # fmt: skip
CONTEXTS = (
    {"user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
     "(KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.18.84", "utm_source": "instagram"},
    {"user_agent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like "
     "Gecko) Chrome/124.0.0.0 Mobile Safari/537.36", "referrer": "https://www.google.com/"},
    {"user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
     "Gecko) Chrome/124.0.0.0 Safari/537.36", "referrer": ""},
    {"user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, "
     "like Gecko) Version/17.4 Safari/605.1.15", "utm_source": "google", "utm_medium": "cpc"},
)  # fmt: skip
Counts = dict[tuple[str, str], tuple[int, int, int]]  # (segment, variant) → exp, conv, repeats


def _ts(dt: datetime) -> str:
    return format_timestamp(dt)


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------- what was sent


@dataclass(frozen=True)
class Item:
    """One record to produce, and what the service must do with it."""

    base: str
    key: bytes | None
    value: bytes | None
    kind: str = "valid"  # or the fault's name
    reasons: frozenset[str] = frozenset()  # dead-letter reasons a fault may get
    group: str | None = None  # copies of one record: exactly one of them is refused

    @property
    def fault(self) -> bool:
        return self.kind != "valid"


@dataclass(frozen=True)
class Sent:
    item: Item
    topic: str
    partition: int
    offset: int

    @property
    def where(self) -> tuple[str, int, int]:
        return self.topic, self.partition, self.offset


def doc_item(base: str, doc: Mapping[str, Any], **kw: Any) -> Item:
    return Item(base, str(doc.get("visitor_id", "k")).encode(), orjson.dumps(doc), **kw)


class Sender:
    """An acks=all producer that keeps where each record landed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = kafka_clients.producer(
            settings, acks="all", linger_ms=5, max_request_size=1_048_576
        )
        self.sent: list[Sent] = []

    async def __aenter__(self) -> Sender:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(self, items: Iterable[Item]) -> list[Sent]:
        items = list(items)
        pending = [
            await self.producer.send(topic_name(self.settings, i.base), i.value, key=i.key)
            for i in items
        ]
        done = []
        for item, meta in zip(items, await asyncio.gather(*pending), strict=True):
            done.append(Sent(item, meta.topic, meta.partition, meta.offset))
        self.sent += done
        return done


class Tail:
    """A topic read from its beginning, record by record, without a consumer group."""

    def __init__(self, settings: Settings, base: str) -> None:
        self.consumer = kafka_clients.consumer(
            settings, topic_name(settings, base), auto_offset_reset="earliest", group_id=None
        )
        self.docs: list[dict[str, Any]] = []

    async def __aenter__(self) -> Tail:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def drain(self, quiet_polls: int = 4) -> None:
        """Read until `quiet_polls` polls in a row bring nothing new."""
        quiet = 0
        while quiet < quiet_polls:
            quiet = 0 if await self.poll(250) else quiet + 1

    async def poll(self, timeout_ms: int = 200) -> list[dict[str, Any]]:
        new = []
        for records in (await self.consumer.getmany(timeout_ms=timeout_ms)).values():
            for r in records:
                try:
                    doc = orjson.loads(r.value or b"null")
                except orjson.JSONDecodeError:
                    continue  # the fuzzer's own bad records on an input topic
                if isinstance(doc, dict):
                    new.append(doc)
        self.docs += new
        return new


# --------------------------------------------------------------------- expected counts


@dataclass
class Ledger:
    """What the valid traffic must add up to, per (segment, variant)."""

    exposures: Counter[tuple[str, str]] = field(default_factory=Counter)
    conversions: Counter[tuple[str, str]] = field(default_factory=Counter)
    repeats: Counter[tuple[str, str]] = field(default_factory=Counter)

    def expose(self, decision: Mapping[str, Any]) -> None:
        self.exposures[(decision["segment_key"], decision["variant_id"])] += 1

    def convert(self, decision: Mapping[str, Any], repeat: bool) -> None:
        cell = (decision["segment_key"], decision["variant_id"])
        (self.repeats if repeat else self.conversions)[cell] += 1

    def expected(self) -> Counts:
        cells = set(self.exposures) | set(self.conversions) | set(self.repeats)
        return {c: (self.exposures[c], self.conversions[c], self.repeats[c]) for c in cells}

    def totals(self) -> tuple[int, int, int]:
        return _totals(self.expected())


def _totals(counts: Counts) -> tuple[int, int, int]:
    return (
        sum(c[0] for c in counts.values()),
        sum(c[1] for c in counts.values()),
        sum(c[2] for c in counts.values()),
    )


def discrepancy(expected: Counts, actual: Counts) -> tuple[int, int]:
    """(lost, double-counted) over every cell and count."""
    lost = duplicated = 0
    for cell in set(expected) | set(actual):
        for want, got in zip(
            expected.get(cell, (0, 0, 0)), actual.get(cell, (0, 0, 0)), strict=True
        ):
            lost += max(0, want - got)
            duplicated += max(0, got - want)
    return lost, duplicated


async def read_counts(dsn: str, experiment_id: str) -> Counts:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT segment_key, variant_id, exposures, conversions, repeat_conversions "
            "FROM variant_segment_state WHERE experiment_id = $1",
            experiment_id,
        )
    finally:
        await conn.close()
    return {
        (r["segment_key"], r["variant_id"]): (
            r["exposures"],
            r["conversions"],
            r["repeat_conversions"],
        )
        for r in rows
    }


async def counts_or_none(dsn: str, experiment_id: str) -> Counts | None:
    """The counts, or None while the database does not answer."""
    try:
        return await read_counts(dsn, experiment_id)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return None


async def poll_until(
    check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.25
) -> bool:
    """Call `check` until it holds or `timeout` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(every)


async def wait_exact(
    dsn: str, experiment_id: str, expected: Counts, timeout: float
) -> tuple[Counts, float]:
    """Poll the counts until they equal `expected` (or time out); (counts, seconds waited)."""
    started = time.monotonic()
    last: Counts = {}

    async def exact() -> bool:
        nonlocal last
        got = await counts_or_none(dsn, experiment_id)
        if got is not None:
            last = got
        return _nonzero(last) == _nonzero(expected)

    await poll_until(exact, timeout)
    return last, time.monotonic() - started


def _nonzero(counts: Counts) -> Counts:
    return {k: v for k, v in counts.items() if any(v)}


# --------------------------------------------------------------------- valid traffic


@dataclass
class Traffic:
    """Decisions of record, their exposures and conversions (and visits), as records."""

    decisions: list[dict[str, Any]] = field(default_factory=list)
    exposures: list[dict[str, Any]] = field(default_factory=list)
    conversions: list[dict[str, Any]] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)


def backlog(
    rng: random.Random,
    experiment_id: str,
    n: int,
    segments: list[str],
    tag: str,
    *,
    hot: float = 0.0,
    conversion_rate: float = 0.3,
    repeat_rate: float = 0.1,
    now: datetime | None = None,
) -> Traffic:
    """n decisions, each exposed once; some convert, some of those again (repeats).

    `hot`: share of the decisions in `segments[0]`. Everything happened in the last minute,
    well inside the attribution window, so nothing valid expires while the test runs.
    """
    t = Traffic()
    start = (now or _now()) - timedelta(seconds=60)
    for i in range(n):
        segment = segments[0] if rng.random() < hot else rng.choice(segments)
        decided = start + timedelta(microseconds=i * 500)
        d = {
            "decision_id": f"{tag}-d{i}",
            "event_id": f"{tag}-visit{i}",
            "experiment_id": experiment_id,
            "visitor_id": f"{tag}-v{i}",
            "variant_id": rng.choice(VARIANTS),
            "segment_key": segment,
            "propensity": 1 / len(VARIANTS),
            "source": "uniform",
            "weights_version": 0,
            "decided_at": _ts(decided),
        }
        exposed = decided + timedelta(milliseconds=5)
        e = {
            "event_id": f"{tag}-x{i}",
            "experiment_id": experiment_id,
            "visitor_id": d["visitor_id"],
            "variant_id": d["variant_id"],
            "decision_id": d["decision_id"],
            "segment_key": segment,
            "occurred_at": _ts(exposed),
        }
        t.decisions.append(d)
        t.exposures.append(e)
        t.items += [doc_item(DECISIONS, d), doc_item(EXPOSURES, e)]
        t.ledger.expose(d)
        if rng.random() < conversion_rate:
            at = exposed
            for repeat in (False, True):
                at += timedelta(seconds=rng.uniform(1, 20))
                c = {
                    "event_id": f"{tag}-c{i}-{int(repeat)}",
                    "experiment_id": experiment_id,
                    "visitor_id": d["visitor_id"],
                    "occurred_at": _ts(at),
                    "value": round(rng.uniform(1, 200), 2),
                }
                t.conversions.append(c)
                t.items.append(doc_item(CONVERSIONS, c))
                t.ledger.convert(d, repeat)
                if rng.random() >= repeat_rate:
                    break
    return t


def visit_doc(experiment_id: str, visitor_id: str, rng: random.Random) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "experiment_id": experiment_id,
        "visitor_id": visitor_id,
        "occurred_at": _ts(_now() - timedelta(milliseconds=100)),
        "context": dict(rng.choice(CONTEXTS), country="US"),
    }


# --------------------------------------------------------------------- bad traffic


def _in(*reasons: str) -> frozenset[str]:
    return frozenset(reasons)


SCHEMA = _in("schema_violation")
DECODE_BASES = (VISITS, EXPOSURES, CONVERSIONS, DECISIONS)
REQUIRED = {
    VISITS: ("event_id", "experiment_id", "visitor_id", "occurred_at"),
    EXPOSURES: (
        "event_id", "experiment_id", "visitor_id", "variant_id", "decision_id",
        "segment_key", "occurred_at",
    ),
    CONVERSIONS: ("event_id", "experiment_id", "visitor_id", "occurred_at"),
    DECISIONS: (
        "decision_id", "event_id", "experiment_id", "visitor_id", "variant_id", "segment_key",
        "propensity", "source", "weights_version", "decided_at",
    ),
}  # fmt: skip
NUMERIC = {"propensity", "weights_version", "value"}


class Fuzzer:
    """Seeded bad events against known valid traffic (`Traffic`), each with the reasons the
    service may give it. Templates never name a real decision or visitor, so a fault that
    slipped through would still be dead-lettered (with another reason) rather than counted."""

    def __init__(
        self,
        rng: random.Random,
        experiment_id: str,
        stopped_id: str,
        traffic: Traffic,
        visits: list[Item],
        window_s: int = WINDOW_S,
    ) -> None:
        self.rng = rng
        self.eid = experiment_id
        self.stopped = stopped_id
        self.traffic = traffic
        self.visits = visits
        self.window = timedelta(seconds=window_s)
        self.now = _now()
        self.n = 0
        self.candidates: dict[str, list[int]] = {}  # per base: originals not copied yet
        self.makers: list[tuple[float, Callable[[], Item]]] = [
            (8, self.wrong_type), (6, self.missing_field), (4, self.extra_field),
            (1, self.huge_string), (3, self.long_string), (3, self.deep_nesting),
            (5, self.invalid_utf8), (5, self.nan_literal), (4, self.garbage),
            (3, self.not_an_object), (4, self.future), (4, self.bad_timestamp),
            (2, self.bad_value), (3, self.bad_id), (5, self.unknown_experiment),
            (3, self.stopped_experiment), (4, self.unknown_variant), (5, self.bad_segment),
            (5, self.unknown_decision), (5, self.contradicts), (5, self.unknown_visitor),
            (4, self.duplicate_exposure), (4, self.duplicate_conversion),
            (2, self.duplicate_visit),
        ]  # fmt: skip

    def faults(self, n: int) -> list[Item]:
        weights = [w for w, _ in self.makers]
        makers = [m for _, m in self.makers]
        return [self.rng.choices(makers, weights)[0]() for _ in range(n)]

    # --- templates: valid documents that name nothing real
    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"fz-{prefix}{self.n}"

    def template(self, base: str) -> dict[str, Any]:
        rng, eid = self.rng, self.eid
        when = _ts(self.now - self.window - timedelta(seconds=rng.uniform(0, 5)))
        if base == VISITS:
            return visit_doc(eid, self._id("visitor"), rng) | {"event_id": self._id("visit")}
        if base == EXPOSURES:
            return {
                "event_id": self._id("x"), "experiment_id": eid, "visitor_id": self._id("v"),
                "variant_id": rng.choice(VARIANTS), "decision_id": self._id("nodecision"),
                "segment_key": rng.choice(SEGMENTS), "occurred_at": when,
            }  # fmt: skip
        if base == CONVERSIONS:
            return {
                "event_id": self._id("c"), "experiment_id": eid, "visitor_id": self._id("v"),
                "occurred_at": when, "value": round(rng.uniform(0, 100), 2),
            }  # fmt: skip
        return {
            "decision_id": self._id("d"), "event_id": self._id("visit"), "experiment_id": eid,
            "visitor_id": self._id("v"), "variant_id": rng.choice(VARIANTS),
            "segment_key": rng.choice(SEGMENTS), "propensity": 0.5, "source": "segment",
            "weights_version": 3, "decided_at": _ts(self.now),
        }  # fmt: skip

    def _key(self) -> bytes | None:
        r = self.rng.random()
        if r < 0.02:
            return None
        if r < 0.03:  # a huge key: the dead letter must still fit in a record
            return b"k" * self.rng.randrange(2_000, 200_000)
        return self._id("key").encode()

    def _item(self, base: str, value: bytes | None, kind: str, reasons: frozenset[str]) -> Item:
        key = self._key()
        if value is None and key is None:  # a tombstone needs a key
            key = b"tombstone"
        return Item(base, key, value, kind, reasons)

    def _decode_base(self) -> str:
        return self.rng.choice(DECODE_BASES)

    # --- malformed at decoding
    def wrong_type(self) -> Item:
        base = self._decode_base()
        doc = self.template(base)
        name = self.rng.choice(REQUIRED[base])
        wrong: list[Any] = ["1"] if name in NUMERIC else [1, 2.5, [], ["x"], {"a": 1}, None, True]
        doc[name] = self.rng.choice(wrong)
        return self._item(base, orjson.dumps(doc), "wrong_type", SCHEMA)

    def missing_field(self) -> Item:
        base = self._decode_base()
        doc = self.template(base)
        for name in self.rng.sample(REQUIRED[base], self.rng.randint(1, 3)):
            del doc[name]
        return self._item(base, orjson.dumps(doc), "missing_field", SCHEMA)

    def extra_field(self) -> Item:
        base = self._decode_base()
        doc = self.template(base) | {self.rng.choice(["extra", "__proto__", "Value"]): 1}
        return self._item(base, orjson.dumps(doc), "extra_field", SCHEMA)

    def huge_string(self) -> Item:
        base = self._decode_base()
        doc = self.template(base)
        doc[self.rng.choice(REQUIRED[base])] = "x" * self.rng.randrange(70_000, 850_000)
        return Item(base, b"huge", orjson.dumps(doc), "huge_string", _in("oversized"))

    def long_string(self) -> Item:
        base = self._decode_base()
        doc = self.template(base)
        doc[self.rng.choice(["event_id", "visitor_id", "experiment_id"])] = "y" * 5_000
        return self._item(base, orjson.dumps(doc), "long_string", SCHEMA)

    def deep_nesting(self) -> Item:
        base = self._decode_base()
        depth = self.rng.choice([50, 400, 1_500, 20_000])
        doc = self.template(base) | {"event_id": "@@NEST@@"}
        raw = orjson.dumps(doc).replace(b'"@@NEST@@"', b"[" * depth + b"]" * depth)
        reasons = _in("malformed_json") if depth > 1_000 else SCHEMA
        return self._item(base, raw, "deep_nesting", reasons)

    def invalid_utf8(self) -> Item:
        base = self._decode_base()
        doc = self.template(base) | {"event_id": "@@BAD@@"}
        bad = self.rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80abc"])
        raw = orjson.dumps(doc).replace(b"@@BAD@@", b"id" + bad)
        return self._item(base, raw, "invalid_utf8", _in("invalid_utf8"))

    def nan_literal(self) -> Item:
        base = self._decode_base()
        name = {CONVERSIONS: "value", DECISIONS: "propensity"}.get(base, "occurred_at")
        doc = self.template(base) | {name: "@@NAN@@"}
        literal = self.rng.choice([b"NaN", b"Infinity", b"-Infinity", b"nan", b"1e999999"])
        raw = orjson.dumps(doc).replace(b'"@@NAN@@"', literal)
        reasons = _in("malformed_json", "schema_violation") if literal == b"1e999999" else None
        return self._item(base, raw, "nan_literal", reasons or _in("malformed_json"))

    def garbage(self) -> Item:
        base = self._decode_base()
        raw = orjson.dumps(self.template(base))
        choice = self.rng.randrange(4)
        value: bytes | None
        if choice == 0:
            value = raw[: self.rng.randrange(1, len(raw) - 1)]  # truncated JSON
        elif choice == 1:
            value = self.rng.choice([b"", None])  # empty record, tombstone
        elif choice == 2:
            value = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randrange(1, 300)))
        else:
            value = b"{'single': 'quotes'}"
        reasons = _in("malformed_json", "invalid_utf8", "not_an_object")
        return self._item(base, value, "garbage", reasons)

    def not_an_object(self) -> Item:
        value = self.rng.choice([b"[1, 2]", b'"visit"', b"42", b"null", b"true", b"[{}]"])
        return self._item(self._decode_base(), value, "not_an_object", _in("not_an_object"))

    def future(self) -> Item:
        base = self.rng.choice([VISITS, EXPOSURES, CONVERSIONS])
        when = self.rng.choice(
            ["9999-12-31T23:59:59Z", _ts(self.now + timedelta(days=self.rng.randint(1, 900)))]
        )
        doc = self.template(base) | {"occurred_at": when}
        return self._item(base, orjson.dumps(doc), "future", _in("future_timestamp"))

    def bad_timestamp(self) -> Item:
        base = self._decode_base()
        name = "decided_at" if base == DECISIONS else "occurred_at"
        when = self.rng.choice(
            [
                "2024-02-30T00:00:00Z", "0000-01-01T00:00:00Z", "2024-13-01T00:00:00Z",
                "yesterday", "2024-05-01 12:00:00", "2024-05-01T12:00:00", "1714564800",
                "2024-05-01T25:00:00Z", "0001-01-01T00:00:00+01:00",
            ]
        )  # fmt: skip
        doc = self.template(base) | {name: when}
        return self._item(base, orjson.dumps(doc), "bad_timestamp", SCHEMA)

    def bad_value(self) -> Item:
        doc = self.template(CONVERSIONS)
        doc["value"] = self.rng.choice([1.5e308, -1, 1e13, -0.01])
        return self._item(CONVERSIONS, orjson.dumps(doc), "bad_value", SCHEMA)

    def bad_id(self) -> Item:
        base = self._decode_base()
        doc = self.template(base)
        doc[self.rng.choice(REQUIRED[base][:3])] = self.rng.choice(
            ["has space", "pipe|id", "", "tab\tid", "é-accent", "new\nline"]
        )
        return self._item(base, orjson.dumps(doc), "bad_id", SCHEMA)

    # --- well-formed, refused by the stages
    def unknown_experiment(self) -> Item:
        base = self.rng.choice([VISITS, EXPOSURES, CONVERSIONS])
        doc = self.template(base) | {"experiment_id": self._id("no-such-experiment")}
        return doc_item(base, doc, kind="unknown_experiment", reasons=_in("unknown_experiment"))

    def stopped_experiment(self) -> Item:
        base = self.rng.choice([VISITS, EXPOSURES, CONVERSIONS])
        doc = self.template(base) | {"experiment_id": self.stopped}
        return doc_item(base, doc, kind="stopped", reasons=_in("experiment_not_running"))

    def _real_exposure(self) -> dict[str, Any]:
        d = self.rng.choice(self.traffic.decisions)
        return {
            "event_id": self._id("x"), "experiment_id": d["experiment_id"],
            "visitor_id": d["visitor_id"], "variant_id": d["variant_id"],
            "decision_id": d["decision_id"], "segment_key": d["segment_key"],
            "occurred_at": _ts(self.now - timedelta(seconds=30)),
        }  # fmt: skip

    def unknown_variant(self) -> Item:
        doc = self._real_exposure() | {"variant_id": self.rng.choice(["z", "A", "control"])}
        return doc_item(EXPOSURES, doc, kind="unknown_variant", reasons=_in("unknown_variant"))

    def bad_segment(self) -> Item:
        keys = BAD_SEGMENTS[:1] * 3 + BAD_SEGMENTS[2:]  # "" breaks the schema, not the key
        doc = self._real_exposure() | {"segment_key": self.rng.choice(keys)}
        return doc_item(EXPOSURES, doc, kind="bad_segment", reasons=_in("invalid_segment_key"))

    def unknown_decision(self) -> Item:
        doc = self.template(EXPOSURES)
        if self.rng.random() < 0.3:
            doc["occurred_at"] = "2001-01-01T00:00:00Z"  # far in the past
        return doc_item(EXPOSURES, doc, kind="unknown_decision", reasons=_in("unknown_decision"))

    def contradicts(self) -> Item:
        doc = self._real_exposure()
        what = self.rng.randrange(3)
        if what == 0:
            doc["variant_id"] = self.rng.choice([v for v in VARIANTS if v != doc["variant_id"]])
        elif what == 1:
            doc["segment_key"] = self.rng.choice([s for s in SEGMENTS if s != doc["segment_key"]])
        else:
            doc["visitor_id"] = self._id("someone-else")
        return doc_item(EXPOSURES, doc, kind="contradicts", reasons=_in("contradicts_decision"))

    def unknown_visitor(self) -> Item:
        doc = self.template(CONVERSIONS)
        if self.rng.random() < 0.3:
            doc["occurred_at"] = self.rng.choice(["1999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"])
        return doc_item(CONVERSIONS, doc, kind="unknown_visitor", reasons=_in("unattributable"))

    def _copy(self, base: str, kind: str, fresh_id: bool = False) -> Item:
        """A copy of a valid record: the original and the copy form a group in which exactly
        one record is refused as a duplicate (each original is copied once at most)."""
        source = self.visits if base == VISITS else self.traffic.items
        if base not in self.candidates:
            pool = [i for i, item in enumerate(source) if item.base == base]
            self.rng.shuffle(pool)
            self.candidates[base] = pool
        index = self.candidates[base].pop()
        group = self._id("group")
        original = replace(source[index], group=group, reasons=_in("duplicate_event"))
        source[index] = original
        value = original.value
        if fresh_id:  # the same decision exposed again under a new event id
            value = orjson.dumps(orjson.loads(value or b"{}") | {"event_id": self._id("x")})
        return Item(base, original.key, value, kind, _in("duplicate_event"), group)

    def duplicate_exposure(self) -> Item:
        return self._copy(EXPOSURES, "duplicate_exposure", fresh_id=self.rng.random() < 0.5)

    def duplicate_conversion(self) -> Item:
        return self._copy(CONVERSIONS, "duplicate_conversion")

    def duplicate_visit(self) -> Item:
        return self._copy(VISITS, "duplicate_visit")


def interleave(rng: random.Random, items: list[Item]) -> list[Item]:
    """Shuffled, except that within a group (and a visitor's conversions) the originals
    keep their order and come before their copies."""
    order = list(items)
    rng.shuffle(order)
    chains: dict[tuple[str, Any], list[int]] = defaultdict(list)
    for i, item in enumerate(order):
        if item.group is not None:
            chains[("group", item.group)].append(i)
        elif item.base == CONVERSIONS and not item.fault:
            chains[("visitor", item.key)].append(i)
    for positions in chains.values():
        members = sorted((order[i] for i in positions), key=lambda it: (it.fault, it.value or b""))
        for pos, member in zip(positions, members, strict=True):
            order[pos] = member
    return order


# --------------------------------------------------------------------- judging dead letters


@dataclass
class Verdict:
    by_reason: Counter[str] = field(default_factory=Counter)
    missing: list[Sent] = field(default_factory=list)  # a fault not dead-lettered
    repeated: list[Sent] = field(default_factory=list)  # dead-lettered more than once
    wrong_reason: list[tuple[Sent, str]] = field(default_factory=list)
    valid_refused: list[tuple[Sent, str]] = field(default_factory=list)
    bad_groups: list[tuple[str, list[str]]] = field(default_factory=list)
    strangers: list[dict[str, Any]] = field(default_factory=list)  # letters of no record sent

    def problems(self) -> list[str]:
        out = []
        for name, found in (
            ("faults not dead-lettered", self.missing),
            ("records dead-lettered more than once", self.repeated),
            ("faults dead-lettered with a reason they do not allow", self.wrong_reason),
            ("valid records dead-lettered", self.valid_refused),
            ("duplicate groups without exactly one duplicate_event", self.bad_groups),
            ("dead letters of records nobody sent", self.strangers),
        ):
            if found:
                out.append(f"{len(found)} {name}, e.g. {_show(found[:3])}")
        return out


def _show(found: list[Any]) -> str:
    def one(x: Any) -> str:
        if isinstance(x, Sent):
            return f"{x.item.kind}@{x.where} {(x.item.value or b'')[:160]!r}"
        if isinstance(x, tuple) and x and isinstance(x[0], Sent):
            return f"{one(x[0])} → {x[1]}"
        return repr(x)[:300]

    return "; ".join(one(x) for x in found)


def judge(sent: list[Sent], letters: list[dict[str, Any]]) -> Verdict:
    v = Verdict()
    by_where: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    for letter in letters:
        by_where[(letter["source_topic"], letter["partition"], letter["offset"])].append(
            letter["reason"]
        )
        v.by_reason[letter["reason"]] += 1
    known = {s.where for s in sent}
    v.strangers = [{"where": w, "reasons": r} for w, r in by_where.items() if w not in known]
    groups: dict[str, list[str]] = defaultdict(list)
    for s in sent:
        reasons = by_where.get(s.where, [])
        if len(reasons) > 1:
            v.repeated.append(s)
        if s.item.group is not None:
            groups[s.item.group] += reasons
        elif not s.item.fault:
            v.valid_refused += [(s, r) for r in reasons]
        elif not reasons:
            v.missing.append(s)
        elif reasons[0] not in s.item.reasons:
            v.wrong_reason.append((s, reasons[0]))
    v.bad_groups = [(g, r) for g, r in groups.items() if r != ["duplicate_event"]]
    return v


# --------------------------------------------------------------------- environment


@dataclass
class Env:
    """One scenario's topics and database, and the workers it starts."""

    settings: Settings
    workdir: Path
    extra: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def dsn(self) -> str:
        return self.settings.database_dsn

    def env(self) -> dict[str, str]:
        return self.settings.environment() | {
            "BANDIT_WEIGHTS_INTERVAL_S": "0.2",
            "BANDIT_WEIGHTS_MIN_CHANGE": "0",
            **WAITS,
            **self.extra,
        }

    def worker(self, name: str) -> WorkerProcess:
        w = WorkerProcess("streams.app", self.env(), self.workdir / f"{name}.log")
        self.workers.append(w)
        return w

    async def start(self, name: str) -> WorkerProcess:
        """A ready worker; one that does not get ready is stopped, not left behind."""
        w = self.worker(name)
        w.start()
        try:
            await w.wait_ready_async(120)
        except BaseException:
            w.stop(30)
            raise
        return w

    def stop_all(self) -> None:
        for w in self.workers:
            w.stop(30)


async def open_env(settings: Settings, workdir: Path, database_url: str, **extra: str) -> Env:
    settings = settings.model_copy(update={"database_url": SecretStr(database_url)})
    await migrate(settings.database_dsn)
    await ensure_topics(settings)
    workdir.mkdir(parents=True, exist_ok=True)
    return Env(settings, workdir, dict(extra))


async def create_experiment(env: Env, experiment_id: str, **kw: Any) -> None:
    status = kw.pop("status", "running")
    doc = new_experiment_document(
        experiment_id,
        list(VARIANTS),
        context_features=list(FEATURES),
        attribution_window_seconds=kw.pop("attribution_window_seconds", WINDOW_S),
        **kw,
    )
    doc["status"] = status
    await save_experiment(env.settings, doc)


def low_free_port(start: int, span: int = 1) -> int:
    """A port (and the `span - 1` after it) nothing listens on, below the ephemeral range."""
    for port in range(start, 32_000 - span):
        if not any(process.port_open("127.0.0.1", port + i, 0.2) for i in range(span)):
            return port
    msg = f"no free port from {start}"
    raise RuntimeError(msg)


class _PrivateService:
    """A local service of one scenario in its own state directory: stopped and started at
    will, removed at the end."""

    dir: Path
    service: LocalPostgres | LocalKafka

    async def up(self) -> None:
        await asyncio.to_thread(self.service.up)

    async def down(self) -> None:
        await asyncio.to_thread(self.service.down)

    async def remove(self) -> None:
        with contextlib.suppress(Exception):
            await self.down()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePostgres(_PrivateService):
    """A PostgreSQL cluster of one scenario (the project's local-service code, its own port)."""

    def __init__(self, port: int = 15532) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bandit-faults-pg-"))
        self.dir.chmod(0o755)  # the `postgres` user must reach its data directory
        port = low_free_port(port)
        self.service = self.cluster = LocalPostgres(
            Settings(state_dir=self.dir, local_postgres_port=port)
        )

    @property
    def dsn(self) -> str:
        return self.cluster.dsn

    @property
    def log(self) -> Path:
        return self.cluster.log


class PrivateKafka(_PrivateService):
    """A broker of one scenario, on its own port and state directory (jars shared)."""

    def __init__(self, port: int = 19192) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bandit-faults-kafka-"))
        port = low_free_port(port, span=2)
        shared = Settings().state_dir / "kafka" / "libs"
        if (shared / ".complete").exists():
            (self.dir / "kafka").mkdir(parents=True)
            (self.dir / "kafka" / "libs").symlink_to(shared)
        self.service = self.broker = LocalKafka(
            Settings(state_dir=self.dir, local_kafka_port=port, kafka_heap="384m")
        )

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap


# --------------------------------------------------------------------- results


@dataclass
class Result:
    """What a scenario produced, what it injected, and how the counts came out."""

    name: str
    produced: int = 0
    faults: int = 0
    lost: int = 0
    duplicated: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "produced": self.produced,
            "faults": self.faults,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "dead_lettered": sum(self.dead_lettered.values()),
            "dead_lettered_by_reason": dict(sorted(self.dead_lettered.items())),
            "problems": self.problems,
            "facts": self.facts,
            "seconds": round(self.seconds, 1),
        }


def _count_check(result: Result, expected: Counts, actual: Counts) -> None:
    result.lost, result.duplicated = discrepancy(expected, actual)
    result.facts["expected_totals"] = _totals(expected)
    result.facts["counted_totals"] = _totals(actual)
    if result.lost or result.duplicated:
        result.problems.append(
            f"counts not exact: {result.lost} lost, {result.duplicated} double-counted "
            f"(expected {_totals(expected)}, counted {_totals(actual)})"
        )


def log_lines(worker: WorkerProcess, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [line for line in worker.log_text().splitlines() if rx.search(line)]


def _alive(result: Result, worker: WorkerProcess, name: str) -> None:
    if worker.returncode is not None:
        result.problems.append(
            f"worker {name} exited ({worker.returncode}):\n{worker.log_tail(40)}"
        )


CRASH = r"Traceback|[Cc]rashed|Agent.*(stopped|restart)|exited unexpectedly"


def _crashes(result: Result, worker: WorkerProcess, name: str) -> None:
    found = log_lines(worker, CRASH)
    result.facts[f"{name}_crash_lines"] = len(found)
    if found:
        result.problems.append(f"worker {name} logged {len(found)} crash lines: {found[:5]}")


# --------------------------------------------------------------------- scenarios


async def fuzz(
    settings: Settings, workdir: Path, database_url: str, *, scale: float = 1, seed: int = 17
) -> Result:
    """≥ 10,000 × scale bad events interleaved with valid traffic, through one worker."""
    started = time.monotonic()
    result = Result("fuzz")
    rng = random.Random(seed)
    env = await open_env(settings, workdir, database_url)
    await create_experiment(env, "fuzz", sticky=False)
    await create_experiment(env, "fuzz-stopped", status="stopped")
    traffic = backlog(rng, "fuzz", int(2_500 * scale), SEGMENTS[:20], "ok")
    visits = [
        doc_item(VISITS, visit_doc("fuzz", f"ok-visitor{i}", rng)) for i in range(int(400 * scale))
    ]
    fuzzer = Fuzzer(rng, "fuzz", "fuzz-stopped", traffic, visits)
    bad = fuzzer.faults(int(10_000 * scale))
    items = interleave(rng, [*traffic.items, *visits, *bad])
    groups = {i.group for i in items if i.group}
    result.faults = len(bad)
    worker = await env.start("fuzz")
    try:
        async with Sender(env.settings) as sender, Tail(env.settings, DEADLETTER) as letters:
            for chunk in range(0, len(items), 2_000):
                await sender.send(items[chunk : chunk + 2_000])
            result.produced = len(sender.sent)
            want_letters = len(bad)  # each fault once; each group's copy or original once
            expected = traffic.ledger.expected()

            async def done() -> bool:
                await letters.poll()
                worker.check_alive()
                if len(letters.docs) < want_letters:
                    return False
                got = await read_counts(env.dsn, "fuzz")
                return _nonzero(got) == _nonzero(expected)

            finished = await poll_until(done, timeout=150 * max(1.0, scale))
            # what would be dead-lettered twice, or counted twice, shows up now
            await asyncio.sleep(3)
            await letters.drain()
            if not finished:
                result.problems.append(
                    f"not settled in time: {len(letters.docs)} of {want_letters} dead letters"
                )
            verdict = judge(sender.sent, letters.docs)
            result.dead_lettered = verdict.by_reason
            result.problems += verdict.problems()
            result.facts["verdict"] = verdict
            result.facts["groups"] = len(groups)
            result.facts["by_kind"] = Counter(i.kind for i in bad)
            _count_check(result, expected, await read_counts(env.dsn, "fuzz"))
            result.facts["valid_visits_without_decision"] = await _undecided(env, visits)
            if result.facts["valid_visits_without_decision"]:
                result.problems.append(
                    f"{result.facts['valid_visits_without_decision']} valid visits got no decision"
                )
        _alive(result, worker, "fuzz")
        _crashes(result, worker, "fuzz")
        result.facts["poison"] = verdict.by_reason.get("processing_error", 0)
    finally:
        env.stop_all()
    result.seconds = time.monotonic() - started
    return result


async def delta_copies(env: Env) -> int:
    """How many records of `segment-deltas` repeat a delta_id sent before (the owner must
    apply each delta once, however often it is sent)."""
    seen: Counter[int] = Counter()
    async with Tail(env.settings, SEGMENT_DELTAS) as tail:
        await tail.drain()
    seen.update(int(d["delta_id"]) for d in tail.docs if "delta_id" in d)
    return sum(n - 1 for n in seen.values())


async def no_dead_letters(result: Result, env: Env) -> None:
    """Every record of these scenarios is valid: none may be dead-lettered (an outage or a
    restart misread as poison would show up here as `processing_error`)."""
    async with Tail(env.settings, DEADLETTER) as tail:
        await tail.drain()
    result.dead_lettered = Counter(str(d.get("reason")) for d in tail.docs)
    if tail.docs:
        result.problems.append(
            f"{len(tail.docs)} valid records dead-lettered: {dict(result.dead_lettered)}, "
            f"e.g. {str(tail.docs[0])[:500]}"
        )


async def _undecided(env: Env, visits: list[Item]) -> int:
    """How many of the (valid) visits have no decision on `decisions`."""
    wanted = {orjson.loads(v.value or b"{}")["event_id"] for v in visits}
    seen: set[str] = set()
    async with Tail(env.settings, DECISIONS) as tail:

        async def all_seen() -> bool:
            seen.update(str(d.get("event_id")) for d in await tail.poll())
            return wanted <= seen

        await poll_until(all_seen, 30, every=0)
    return len(wanted - seen)


class Client:
    """A web back end: sends visits, exposes every decision it gets back (once, as decided),
    converts some of them (and some twice)."""

    def __init__(
        self, env: Env, experiment_id: str, rng: random.Random, conversion_rate: float = 0.2
    ) -> None:
        self.env = env
        self.eid = experiment_id
        self.rng = rng
        self.conversion_rate = conversion_rate
        self.sender = Sender(env.settings)
        self.tail = Tail(env.settings, DECISIONS)
        self.visits: dict[str, float] = {}  # event_id → monotonic time sent
        self.first: dict[str, dict[str, Any]] = {}  # decision_id → first copy read
        self.read_at: dict[str, float] = {}  # decision_id → monotonic time first read
        self.by_visit: dict[str, set[str]] = defaultdict(set)
        self.replays = 0
        self.differing: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.ledger = Ledger()
        self.n = 0

    async def __aenter__(self) -> Client:
        await self.sender.__aenter__()
        await self.tail.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.tail.__aexit__()
        await self.sender.__aexit__()

    async def send_visits(self, n: int) -> None:
        docs = []
        for _ in range(n):
            self.n += 1
            docs.append(visit_doc(self.eid, f"visitor-{self.n}", self.rng))
        await self.sender.send(doc_item(VISITS, d) for d in docs)
        now = time.monotonic()
        for d in docs:
            self.visits[d["event_id"]] = now

    async def pump(self, timeout_ms: int = 50) -> int:
        """Read new decisions; expose (and convert) each new one. How many were new."""
        out: list[Item] = []
        now = time.monotonic()
        for d in await self.tail.poll(timeout_ms):
            if d.get("experiment_id") != self.eid:
                continue
            self.by_visit[d["event_id"]].add(d["decision_id"])
            seen = self.first.get(d["decision_id"])
            if seen is not None:
                self.replays += 1
                if _sans_time(seen) != _sans_time(d):
                    self.differing.append((seen, d))
                continue
            self.first[d["decision_id"]] = d
            self.read_at[d["decision_id"]] = now
            out += self._respond(d)
        if out:
            await self.sender.send(out)
        return sum(1 for i in out if i.base == EXPOSURES)

    def _respond(self, d: dict[str, Any]) -> list[Item]:
        at = _now()
        e = {
            "event_id": f"x-{d['decision_id']}",
            "experiment_id": d["experiment_id"],
            "visitor_id": d["visitor_id"],
            "variant_id": d["variant_id"],
            "decision_id": d["decision_id"],
            "segment_key": d["segment_key"],
            "occurred_at": _ts(at),
        }
        self.ledger.expose(d)
        out = [doc_item(EXPOSURES, e)]
        if self.rng.random() < self.conversion_rate:
            for repeat in (False, True):
                at += timedelta(milliseconds=2)
                c = {
                    "event_id": f"c-{d['decision_id']}-{int(repeat)}",
                    "experiment_id": d["experiment_id"],
                    "visitor_id": d["visitor_id"],
                    "occurred_at": _ts(at),
                    "value": 10.0,
                }
                out.append(doc_item(CONVERSIONS, c))
                self.ledger.convert(d, repeat)
                if self.rng.random() >= 0.2:
                    break
        return out

    async def run(self, rate: float, seconds: float) -> None:
        """Visits at `rate` per second for `seconds`, answering decisions meanwhile."""
        deadline = time.monotonic() + seconds
        tick = 0.1
        owed = 0.0
        while time.monotonic() < deadline:
            began = time.monotonic()
            owed += rate * tick
            if owed >= 1:
                await self.send_visits(int(owed))
                owed -= int(owed)
            await self.pump(20)
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - began)))

    def undecided(self) -> list[str]:
        return [v for v in self.visits if not self.by_visit.get(v)]

    async def drain(self, timeout: float) -> bool:
        """Until every visit has its decision (and every decision its exposure)."""

        async def all_decided() -> bool:
            await self.pump(200)
            return not self.undecided()

        return await poll_until(all_decided, timeout, every=0)

    def check(self, result: Result) -> None:
        result.produced = len(self.sender.sent)
        result.facts["visits"] = len(self.visits)
        result.facts["decisions"] = len(self.first)
        result.facts["replayed_decisions"] = self.replays
        undecided = self.undecided()
        if undecided:
            result.problems.append(f"{len(undecided)} visits without a decision")
        result.facts["replays_differing"] = len(self.differing)
        result.facts["replays_other_variant"] = sum(
            a["variant_id"] != b["variant_id"] for a, b in self.differing
        )
        if self.differing:
            a, b = self.differing[0]
            result.problems.append(
                f"{len(self.differing)} replayed decisions differ from the first, e.g. {a} vs {b}"
            )
        many = [v for v, ids in self.by_visit.items() if len(ids) > 1]
        if many:
            result.problems.append(f"{len(many)} visits with more than one decision_id")


def _sans_time(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "decided_at"}


async def postgres_outage(
    settings: Settings,
    workdir: Path,
    *,
    scale: float = 1,
    seed: int = 2,
    outage_s: float = 30,
    port: int = 15532,
) -> Result:
    """Live traffic; Postgres stopped `outage_s` seconds; no restart; counts exact."""
    started = time.monotonic()
    result = Result("postgres-outage", faults=1)  # one outage
    pg = PrivatePostgres(port)
    env: Env | None = None
    try:
        await pg.up()
        env = await open_env(settings, workdir, pg.dsn)
        await create_experiment(env, "outage", sticky=False)
        worker = await env.start("outage")
        pid = worker.proc.pid if worker.proc else None
        rate = 80 * scale
        async with Client(env, "outage", random.Random(seed)) as client:
            await client.run(rate, 8)
            result.facts["before"] = _totals(await read_counts(env.dsn, "outage"))
            lines_before = len(worker.log_text().splitlines())
            await pg.down()
            down_at = time.monotonic()
            await client.run(rate, outage_s)
            up_at = time.monotonic()
            await pg.up()
            outage_visits = [v for v, t in client.visits.items() if down_at <= t <= up_at]
            decided = [d for d, t in client.read_at.items() if down_at <= t <= up_at]
            result.facts["visits_during_outage"] = len(outage_visits)
            result.facts["decisions_during_outage"] = len(decided)
            await client.run(rate, 5)
            if not await client.drain(60):
                result.problems.append("decisions still missing after the outage")
            client.check(result)
            expected = client.ledger.expected()
            counts, waited = await wait_exact(env.dsn, "outage", expected, 150)
            result.facts["settled_after_s"] = round(waited, 1)
            _count_check(result, expected, counts)
            await no_dead_letters(result, env)
        if len(decided) < 0.5 * len(outage_visits):
            result.problems.append(
                f"decisions stalled during the outage: {len(decided)} decisions for "
                f"{len(outage_visits)} visits"
            )
        _alive(result, worker, "outage")
        if worker.proc is None or worker.proc.pid != pid:
            result.problems.append("the worker was restarted")
        errors = [
            line
            for line in worker.log_text().splitlines()[lines_before:]
            if "ERROR" in line or "CRITICAL" in line
        ]
        result.facts["error_lines"] = len(errors)
        result.facts["error_kinds"] = Counter(_stem(line) for line in errors)
        if len(errors) > 8:
            result.problems.append(
                f"{len(errors)} ERROR lines for a {outage_s:.0f} s outage (a few expected): "
                f"{[line[:200] for line in errors[:12]]}"
            )
    finally:
        if env is not None:
            env.stop_all()
        await pg.remove()
    result.seconds = time.monotonic() - started
    return result


async def _produce_backlog(env: Env, traffic: Traffic, *, decisions_last: bool = True) -> int:
    """Exposures and conversions first, their decisions last (everything waits once)."""
    order = [i for i in traffic.items if i.base != DECISIONS]
    decisions = [i for i in traffic.items if i.base == DECISIONS]
    items = [*order, *decisions] if decisions_last else traffic.items
    async with Sender(env.settings) as sender:
        for chunk in range(0, len(items), 5_000):
            await sender.send(items[chunk : chunk + 5_000])
        return len(sender.sent)


async def _wait_partial(env: Env, experiment_id: str, timeout: float = 90) -> tuple[int, ...]:
    """Until something is counted; the totals then."""
    got: Counts = {}

    async def some() -> bool:
        nonlocal got
        got = await counts_or_none(env.dsn, experiment_id) or {}
        return _totals(got)[0] > 0

    await poll_until(some, timeout, every=0.05)
    return _totals(got)


async def _committed_past_applied(env: Env) -> dict[str, int]:
    """Partitions whose committed Kafka offset passes what Postgres applied (the offsets of
    record, `consumer_watermarks`): 'topic[partition]' → records that would be skipped."""
    s = env.settings
    admin = kafka_clients.admin(s)
    await admin.start()
    committed = {}
    try:
        # faust's group, and the plain stages' (`streams.agents.plain`)
        for group in (s.app_id, *(stage.group(s.app_id) for stage in STAGES)):
            committed.update(await admin.list_consumer_group_offsets(group))
    finally:
        await admin.close()
    conn = await asyncpg.connect(env.dsn, timeout=10)
    try:
        rows = await conn.fetch("SELECT topic, partition, last_offset FROM consumer_watermarks")
    finally:
        await conn.close()
    applied = {(r["topic"], r["partition"]): r["last_offset"] for r in rows}
    recorded = {topic_name(s, b) for b in (DECISIONS, EXPOSURES, CONVERSIONS, SEGMENT_DELTAS)}
    ahead: dict[str, int] = {}
    for tp, meta in committed.items():
        skipped = meta.offset - 1 - applied.get((tp.topic, tp.partition), -1)
        if tp.topic in recorded and skipped > 0:
            ahead[f"{tp.topic}[{tp.partition}]"] = skipped
    return ahead


async def broker_restart(
    settings: Settings,
    workdir: Path,
    database_url: str,
    *,
    scale: float = 1,
    seed: int = 3,
    port: int = 19192,
) -> Result:
    """A private broker restarted while one worker drains a backlog; more traffic after."""
    started = time.monotonic()
    result = Result("broker-restart", faults=1)  # one restart
    kafka = PrivateKafka(port)
    env: Env | None = None
    try:
        await kafka.up()
        local = settings.model_copy(update={"kafka_bootstrap_servers": kafka.bootstrap})
        env = await open_env(local, workdir, database_url)
        await create_experiment(env, "restart", sticky=False)
        rng = random.Random(seed)
        first = backlog(rng, "restart", int(6_000 * scale), SEGMENTS[:6], "one")
        result.produced = await _produce_backlog(env, first)
        worker = await env.start("restart")
        pid = worker.proc.pid if worker.proc else None
        partial = await _wait_partial(env, "restart")
        await kafka.down()
        result.facts["partial_at_restart"] = partial
        await asyncio.sleep(2)
        await kafka.up()
        second = backlog(rng, "restart", int(2_000 * scale), SEGMENTS[:6], "two")
        result.produced += await _produce_backlog(env, second, decisions_last=False)
        expected = Ledger(
            first.ledger.exposures + second.ledger.exposures,
            first.ledger.conversions + second.ledger.conversions,
            first.ledger.repeats + second.ledger.repeats,
        ).expected()
        _, waited = await wait_exact(env.dsn, "restart", expected, 180)
        result.facts["settled_after_s"] = round(waited, 1)
        await asyncio.sleep(2)
        _count_check(result, expected, await read_counts(env.dsn, "restart"))
        await no_dead_letters(result, env)
        result.facts["delta_copies_on_topic"] = await delta_copies(env)
        if partial[0] >= _totals(expected)[0] - len(second.exposures):
            result.problems.append(f"the restart did not hit the stream mid-way: {partial}")
        _alive(result, worker, "restart")
        errors = log_lines(worker, r"\[ERROR\]")
        result.facts["error_lines"] = len(errors)
        result.facts["error_kinds"] = Counter(_stem(line) for line in errors).most_common(5)
        if len(errors) > 1_000:
            result.problems.append(
                f"{len(errors):,} ERROR lines for a broker restart of a few seconds: "
                f"{result.facts['error_kinds'][:2]}"
            )
        if worker.proc is None or worker.proc.pid != pid:
            result.problems.append("the worker was restarted")
    finally:
        if env is not None:
            env.stop_all()
        await kafka.remove()
    result.seconds = time.monotonic() - started
    return result


async def sigterm_outage(
    settings: Settings,
    workdir: Path,
    *,
    scale: float = 1,
    seed: int = 4,
    port: int = 15534,
    bound_s: float = 40,
) -> Result:
    """SIGTERM while a batch waits for Postgres; a new worker finishes once it is back."""
    started = time.monotonic()
    result = Result("sigterm-outage", faults=2)  # an outage, a SIGTERM in it
    pg = PrivatePostgres(port)
    env: Env | None = None
    try:
        await pg.up()
        # faust commits every 20 ms here, so that a commit of records faust acked but the
        # runtime did not apply (a batch in flight when its stream stops) is likely to land
        # before the worker exits: without Runtime.committable, 1 of 2 runs lost counts
        # (about 1 of 16 at the default 0.5 s)
        env = await open_env(settings, workdir, pg.dsn, BANDIT_COMMIT_INTERVAL_S="0.02")
        await create_experiment(env, "term", sticky=False)
        rng = random.Random(seed)
        first = backlog(rng, "term", int(4_000 * scale), SEGMENTS[:4], "one")
        result.produced = await _produce_backlog(env, first)
        worker = await env.start("first")
        result.facts["partial_before_outage"] = await _wait_partial(env, "term")
        await pg.down()
        second = backlog(rng, "term", int(1_000 * scale), SEGMENTS[:4], "two")
        result.produced += await _produce_backlog(env, second, decisions_last=False)

        async def retrying() -> bool:
            worker.check_alive()
            return bool(log_lines(worker, r"(track|learn): waiting for the infrastructure"))

        if not await poll_until(retrying, 60):
            result.problems.append("no batch was seen retrying the outage")
        began = time.monotonic()
        code = await asyncio.to_thread(worker.stop, bound_s)
        result.facts["exit_s"] = round(time.monotonic() - began, 1)
        result.facts["exit_code"] = code
        if code is None:
            result.problems.append(
                f"SIGTERM during the outage did not end the worker in {bound_s:.0f} s"
            )
        await pg.up()
        ahead = await _committed_past_applied(env)
        result.facts["kafka_offsets_past_applied"] = ahead
        if ahead:
            result.problems.append(
                f"Kafka's committed offsets pass records never applied: {ahead} (a restart "
                "would skip them)"
            )
        await env.start("second")
        expected = Ledger(
            first.ledger.exposures + second.ledger.exposures,
            first.ledger.conversions + second.ledger.conversions,
            first.ledger.repeats + second.ledger.repeats,
        ).expected()
        _, waited = await wait_exact(env.dsn, "term", expected, 150)
        await asyncio.sleep(2)
        result.facts["settled_after_s"] = round(waited, 1)
        _count_check(result, expected, await read_counts(env.dsn, "term"))
        await no_dead_letters(result, env)
    finally:
        if env is not None:
            env.stop_all()
        await pg.remove()
    result.seconds = time.monotonic() - started
    return result


async def rebalance(
    settings: Settings, workdir: Path, database_url: str, *, scale: float = 1, seed: int = 5
) -> Result:
    """A second worker joins under live traffic; then the first leaves by SIGTERM."""
    started = time.monotonic()
    result = Result("rebalance", faults=2)  # a worker joins, one leaves
    env = await open_env(settings, workdir, database_url)
    try:
        await create_experiment(env, "rebal", sticky=False)
        first = await env.start("first")
        rate = 60 * scale
        async with Client(env, "rebal", random.Random(seed)) as client:
            await client.run(rate, 6)
            second = env.worker("second")
            second.start()
            await asyncio.gather(client.run(rate, 10), second.wait_ready_async(120))
            at_stop = _totals(await read_counts(env.dsn, "rebal"))
            sent_at_stop = client.ledger.totals()
            code, _ = await asyncio.gather(asyncio.to_thread(first.stop, 60), client.run(rate, 10))
            result.facts["first_exit_code"] = code
            result.facts["counted_at_sigterm"] = at_stop
            if not 0 < at_stop[0] < client.ledger.totals()[0] or code != 0:
                result.problems.append(
                    f"the first worker did not leave mid-stream: counted {at_stop} of "
                    f"{sent_at_stop} when it stopped, exit code {code}"
                )
            await client.run(rate, 5)
            if not await client.drain(90):
                result.problems.append("visits still without decisions after the traffic")
            client.check(result)
            expected = client.ledger.expected()
            _, waited = await wait_exact(env.dsn, "rebal", expected, 150)
            await asyncio.sleep(2)
            result.facts["settled_after_s"] = round(waited, 1)
            _count_check(result, expected, await read_counts(env.dsn, "rebal"))
        await no_dead_letters(result, env)
        _alive(result, second, "second")
    finally:
        env.stop_all()
    result.seconds = time.monotonic() - started
    return result


DEADLOCK = r"deadlock detected|DeadlockDetected"


def _stem(line: str) -> str:
    """A log line without its time stamp, pid and the details that vary."""
    text = line.split("] ", 3)[-1]
    return re.sub(r"\(.*\)|\d+", "…", text)[:120]


async def hot_segment(
    settings: Settings, workdir: Path, *, scale: float = 1, seed: int = 6, port: int = 15536
) -> Result:
    """Two workers; half the traffic in one segment, the rest over dozens; no deadlock."""
    started = time.monotonic()
    result = Result("hot-segment")
    pg = PrivatePostgres(port)
    env: Env | None = None
    try:
        await pg.up()
        env = await open_env(settings, workdir, pg.dsn)
        await create_experiment(env, "hot", sticky=False)
        w1, w2 = env.worker("w1"), env.worker("w2")
        w1.start()
        w2.start()
        await asyncio.gather(w1.wait_ready_async(120), w2.wait_ready_async(120))
        rng = random.Random(seed)
        segments = SEGMENTS[:41]
        total = Ledger()
        async with Sender(env.settings) as sender:
            for round_ in range(int(8 * scale)):  # under load: chunks while the workers run
                t = backlog(rng, "hot", 1_500, segments, f"r{round_}", hot=0.5, now=_now())
                await sender.send(interleave(rng, t.items))
                total.exposures += t.ledger.exposures
                total.conversions += t.ledger.conversions
                total.repeats += t.ledger.repeats
                await asyncio.sleep(0.5)
            result.produced = len(sender.sent)
        expected = total.expected()
        _, waited = await wait_exact(env.dsn, "hot", expected, 180)
        await asyncio.sleep(2)
        result.facts["settled_after_s"] = round(waited, 1)
        result.facts["segments"] = len({k[0] for k in expected})
        _count_check(result, expected, await read_counts(env.dsn, "hot"))
        await no_dead_letters(result, env)
        server = [
            line for line in pg.log.read_text(errors="replace").splitlines()
            if re.search(DEADLOCK, line)
        ]  # fmt: skip
        in_workers = log_lines(w1, DEADLOCK) + log_lines(w2, DEADLOCK)
        result.facts["deadlocks_server_log"] = len(server)
        result.facts["deadlocks_worker_logs"] = len(in_workers)
        if server or in_workers:
            result.problems.append(
                f"deadlocks: {len(server)} in Postgres' log, {len(in_workers)} in the workers' "
                f"logs: {(server + in_workers)[:4]}"
            )
        for name, w in (("w1", w1), ("w2", w2)):
            _alive(result, w, name)
    finally:
        if env is not None:
            env.stop_all()
        await pg.remove()
    result.seconds = time.monotonic() - started
    return result


async def delta_twice(
    settings: Settings, workdir: Path, database_url: str, *, copies: int = 2
) -> Result:
    """The same segment delta sent `copies` times back to back (what a producer retry, or
    the outbox's resend racing the first send, puts on `segment-deltas`): applied once."""
    started = time.monotonic()
    result = Result("delta-twice")
    env = await open_env(settings, workdir, database_url)
    try:
        await create_experiment(env, "twice", sticky=False)
        await env.start("twice")
        segment = SEGMENTS[0]
        delta = {
            "delta_id": 9_000_001,
            "experiment_id": "twice",
            "segment_key": segment,
            "variants": {"a": {"exposures": 10.0, "conversions": 3.0}},
        }
        key = f"twice|{segment}".encode()
        async with Sender(env.settings) as sender:
            await sender.send([Item(SEGMENT_DELTAS, key, orjson.dumps(delta))] * copies)
            result.produced = len(sender.sent)
        result.faults = copies - 1
        expected: Counts = {(segment, "a"): (10, 3, 0)}
        await wait_exact(env.dsn, "twice", expected, 30)
        await asyncio.sleep(2)
        _count_check(result, expected, await read_counts(env.dsn, "twice"))
        await no_dead_letters(result, env)
    finally:
        env.stop_all()
    result.seconds = time.monotonic() - started
    return result


REFUSE_POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.exposure_event_id LIKE 'poison-%' THEN
        RAISE EXCEPTION 'injected fault: exposure % refused', NEW.exposure_event_id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON exposure_log
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def _waiting_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pending_events") or 0)
    finally:
        await conn.close()


async def poison_waiting(
    settings: Settings, workdir: Path, database_url: str, *, scale: float = 1, seed: int = 17
) -> Result:
    """Exposures and conversions that wait for their experiment, one of which fails when it
    is read again (the database refuses it: a permanent error, as a bug would raise). Once
    the experiment exists, that one is dead-lettered alone and every record waiting beside
    it is counted."""
    started = time.monotonic()
    result = Result("poison-waiting")
    rng = random.Random(seed)
    env = await open_env(settings, workdir, database_url, BANDIT_UNKNOWN_EXPERIMENT_WAIT_S="600")
    try:
        conn = await asyncpg.connect(env.dsn, timeout=10)
        try:
            await conn.execute(REFUSE_POISON)
        finally:
            await conn.close()
        traffic = backlog(rng, "late", int(400 * scale), SEGMENTS[:8], "late")
        # a decision of record (kept whatever the experiment) and its exposure, which waits
        # for the experiment and is refused by the database when it is read again
        decision = {**traffic.decisions[0], "decision_id": "poison-d0", "event_id": "poison-v"}
        decision["visitor_id"] = "poison-visitor"
        exposure = {
            **traffic.exposures[0],
            "event_id": "poison-x0",
            "decision_id": "poison-d0",
            "visitor_id": "poison-visitor",
        }
        poison = doc_item(EXPOSURES, exposure, kind="poison")
        items = [*traffic.items, doc_item(DECISIONS, decision), poison]
        await env.start("poison")
        async with Sender(env.settings) as sender:
            sent = await sender.send(items)
        result.produced, result.faults = len(sent), 1
        (where,) = [s.where for s in sent if s.item.fault]

        waits = sum(s.item.base != DECISIONS for s in sent)

        async def all_waiting() -> bool:
            return await _waiting_rows(env.dsn) == waits

        if not await poll_until(all_waiting, 60):
            result.problems.append(f"{await _waiting_rows(env.dsn)} of {waits} waiting")
        await create_experiment(env, "late", sticky=False)
        expected = traffic.ledger.expected()
        got, _ = await wait_exact(env.dsn, "late", expected, 60)
        _count_check(result, expected, got)
        left = await _waiting_rows(env.dsn)
        result.facts["still_waiting"] = left
        if left:
            result.problems.append(f"{left} records still waiting")
        async with Tail(env.settings, DEADLETTER) as tail:
            await tail.drain()
        result.dead_lettered = Counter(str(d.get("reason")) for d in tail.docs)
        found = [(d.get("source_topic"), d.get("partition"), d.get("offset")) for d in tail.docs]
        if found != [where] or set(result.dead_lettered) != {"processing_error"}:
            result.problems.append(
                f"dead letters {found} {dict(result.dead_lettered)}; "
                f"expected one processing_error at {where}"
            )
        _alive(result, env.workers[0], "poison")
    finally:
        env.stop_all()
    result.seconds = time.monotonic() - started
    return result


# --------------------------------------------------------------------- the command

SCENARIOS = (
    "fuzz",
    "postgres-outage",
    "broker-restart",
    "sigterm-outage",
    "rebalance",
    "hot-segment",
    "delta-twice",
    "poison-waiting",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--scale", type=float, default=2.0, help="traffic multiplier (default 2; tests run 1)"
    )
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=17, help="seed of the fuzzer")


async def _scratch_database(server_dsn: str) -> tuple[str, Callable[[], Awaitable[None]]]:
    name = f"faults_{uuid.uuid4().hex[:10]}"
    base, _, _ = server_dsn.rpartition("/")

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(f"{base}/postgres", timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    await admin(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}", lambda: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def _database(base: Settings) -> AsyncIterator[str]:
    dsn, drop = await _scratch_database(base.database_dsn)
    try:
        yield dsn
    finally:
        await drop()


async def run(base: Settings, names: Iterable[str], scale: float, seed: int) -> list[Result]:
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="bandit-bench-faults-"))
    for name in names:
        token = uuid.uuid4().hex[:8]
        s = base.model_copy(
            update={"topic_prefix": f"faults{token}.", "app_id": f"faults-{token}", "partitions": 4}
        )
        where = workdir / name
        print(f"bench faults: {name} (scale {scale:g}); logs in {where}", file=sys.stderr)
        if name == "fuzz":
            async with _database(base) as dsn:
                r = await fuzz(s, where, dsn, scale=scale, seed=seed)
        elif name == "postgres-outage":
            r = await postgres_outage(s, where, scale=scale, port=15632)
        elif name == "broker-restart":
            async with _database(base) as dsn:
                r = await broker_restart(s, where, dsn, scale=scale, port=19292)
        elif name == "sigterm-outage":
            r = await sigterm_outage(s, where, scale=scale, port=15634)
        elif name == "rebalance":
            async with _database(base) as dsn:
                r = await rebalance(s, where, dsn, scale=scale)
        elif name == "hot-segment":
            r = await hot_segment(s, where, scale=scale, port=15636)
        elif name == "poison-waiting":
            async with _database(base) as dsn:
                r = await poison_waiting(s, where, dsn, scale=scale, seed=seed)
        else:
            async with _database(base) as dsn:
                r = await delta_twice(s, where, dsn)
        print(
            f"bench faults: {name}: {'ok' if not r.problems else 'FAILED'} in {r.seconds:.0f} s",
            file=sys.stderr,
        )
        results.append(r)
    if all(not r.problems for r in results):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"bench faults: worker logs kept in {workdir}", file=sys.stderr)
    return results


def table(results: list[Result]) -> str:
    head = ("scenario", "produced", "faults", "lost", "double-counted", "dead-lettered", "ok")
    rows = [head] + [
        (
            r.name,
            f"{r.produced:,}",
            f"{r.faults:,}",
            str(r.lost),
            str(r.duplicated),
            f"{sum(r.dead_lettered.values()):,}",
            "yes" if not r.problems else "NO",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]  # fmt: skip
    for r in results:
        if r.dead_lettered:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(r.dead_lettered.items()))
            lines.append(f"{r.name} dead letters by reason: {reasons}")
        for p in r.problems:
            lines.append(f"{r.name} PROBLEM: {p[:600]}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from streams.services import local

    base = Settings()
    names = args.only or list(SCENARIOS)
    endpoints = local.up(base)
    try:
        results = asyncio.run(run(base, names, args.scale, args.seed))
    finally:
        local.down(base, endpoints.started_kafka, endpoints.started_postgres)
    if args.json:
        doc = {"scenarios": {r.name: _json_safe(r.summary()) for r in results}}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(results))
    return 0 if all(not r.problems for r in results) else 1


def _json_safe(summary: dict[str, Any]) -> dict[str, Any]:
    facts = {
        k: (dict(v) if isinstance(v, Counter) else v)
        for k, v in summary["facts"].items()
        if k != "verdict"
    }
    return summary | {"facts": facts}
