"""The open transactions of one consumed batch: what a stage writes, with its offsets.

`watermarked` opens a transaction that skips the records already applied and records the
new offsets (consumer_watermarks, locked FOR UPDATE); `TrackBatch` (visitor partition) and
`LearnBatch` (segment partition) are what the stages do inside it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from streams.core.snapshot import VariantStats
from streams.pipeline.events import RawEvent
from streams.pipeline.learn import OwnedRow, RowKey
from streams.pipeline.track import (
    Attributed,
    DecisionRecord,
    Exposure,
    ExposureRecord,
    Waiting,
)

Pair = tuple[str, str]  # experiment_id, visitor_id
Outgoing = tuple[int, str, str, bytes]  # delta_id, experiment_id, segment_key, document


def _cols(rows: Sequence[Sequence[Any]], n: int) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(n)]


@asynccontextmanager
async def watermarked(
    conn: asyncpg.Connection,
    stage: str,
    events: Sequence[RawEvent],
    also_lock: Iterable[tuple[str, int]] = (),
) -> AsyncIterator[list[RawEvent]]:
    """A transaction that skips the records already applied and records the new offsets.

    It holds the watermark rows of the batch's (topic, partition)s, and of `also_lock`
    (held, not moved), FOR UPDATE, in one order: batches that share a row never interleave.
    """
    last: dict[tuple[str, int], int] = {}
    for e in events:
        last[(e.topic, e.partition)] = max(e.offset, last.get((e.topic, e.partition), -1))
    held = sorted(set(last) | set(also_lock))
    parts = sorted(last)
    topics, partitions = [p[0] for p in held], [p[1] for p in held]
    async with conn.transaction():
        await conn.execute(
            """
            INSERT INTO consumer_watermarks (stage, topic, partition, last_offset)
            SELECT $1, * FROM unnest($2::text[], $3::int[], $4::bigint[])
            ON CONFLICT DO NOTHING
            """,
            stage,
            topics,
            partitions,
            [-1] * len(held),
        )
        rows = await conn.fetch(
            """
            SELECT w.topic, w.partition, w.last_offset FROM consumer_watermarks w
            JOIN unnest($2::text[], $3::int[]) AS p(topic, partition)
              ON w.topic = p.topic AND w.partition = p.partition
            WHERE w.stage = $1
            ORDER BY w.topic, w.partition
            FOR UPDATE OF w
            """,
            stage,
            topics,
            partitions,
        )
        applied = {(r["topic"], r["partition"]): r["last_offset"] for r in rows}
        yield [e for e in events if e.offset > applied.get((e.topic, e.partition), -1)]
        await conn.execute(
            """
            UPDATE consumer_watermarks w SET last_offset = p.last_offset, updated_at = now()
            FROM unnest($2::text[], $3::int[], $4::bigint[]) AS p(topic, partition, last_offset)
            WHERE w.stage = $1 AND w.topic = p.topic AND w.partition = p.partition
              AND p.last_offset > w.last_offset
            """,
            stage,
            [p[0] for p in parts],
            [p[1] for p in parts],
            [last[p] for p in parts],
        )


@dataclass
class TrackBatch:
    """The open transaction of one track batch; `fresh` are the records not applied before."""

    conn: asyncpg.Connection
    fresh: list[RawEvent]
    outbox: list[int] = field(default_factory=list)

    async def insert_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        """Record decisions (a decision read again is the same decision: kept once)."""
        if not decisions:
            return
        rows = [
            (
                d.decision_id,
                d.experiment_id,
                d.visitor_id,
                d.variant_id,
                d.segment_key,
                d.propensity,
                d.weights_version,
                d.source,
                d.decided_at,
            )
            for d in decisions
        ]
        await self.conn.execute(
            """
            INSERT INTO decision_log (decision_id, experiment_id, visitor_id, variant_id,
                                      segment_key, propensity, weights_version, source,
                                      decided_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::float8[], $7::bigint[], $8::text[], $9::timestamptz[])
            ON CONFLICT (decision_id) DO NOTHING
            """,
            *_cols(rows, 9),
        )

    async def decisions_of(self, decision_ids: Iterable[str]) -> dict[str, DecisionRecord]:
        ids = sorted(set(decision_ids))
        if not ids:
            return {}
        rows = await self.conn.fetch(
            """
            SELECT decision_id, experiment_id, visitor_id, variant_id, segment_key, propensity,
                   weights_version, source, decided_at
            FROM decision_log WHERE decision_id = ANY($1::text[])
            """,
            ids,
        )
        return {r["decision_id"]: DecisionRecord(**dict(r)) for r in rows}

    async def take_waiting(
        self,
        *,
        decision_ids: Iterable[str] = (),
        pairs: Iterable[Pair] = (),
    ) -> list[RawEvent]:
        """Take back out what waited for these decisions or for exposures of these pairs."""
        ids = sorted(set(decision_ids))
        keys = sorted(set(pairs))
        rows: list[Any] = []
        if ids:  # two statements, each on its own partial index (an OR scans the table)
            rows += await self.conn.fetch(
                """
                DELETE FROM pending_events p
                WHERE p.expired_at IS NULL AND p.waiting_for = 'decision'
                  AND p.decision_id = ANY($1::text[])
                RETURNING p.source_topic, p.partition, p.source_offset, p.payload
                """,
                ids,
            )
        if keys:
            rows += await self.conn.fetch(
                """
                DELETE FROM pending_events p
                USING unnest($1::text[], $2::text[]) AS k(experiment_id, visitor_id)
                WHERE p.expired_at IS NULL AND p.waiting_for = 'exposure'
                  AND p.experiment_id = k.experiment_id AND p.visitor_id = k.visitor_id
                RETURNING p.source_topic, p.partition, p.source_offset, p.payload
                """,
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
        return _raw(rows)

    async def take_due(
        self, events: Sequence[RawEvent], now: datetime
    ) -> tuple[list[RawEvent], list[RawEvent]]:
        """Take these waiting records out: (those to read again, those whose wait is over).

        A record a batch took meanwhile is not there any more, and is left out.
        """
        rows = await self.conn.fetch(
            """
            DELETE FROM pending_events p
            USING unnest($1::text[], $2::int[], $3::bigint[]) AS k(topic, partition, offset_)
            WHERE p.source_topic = k.topic AND p.partition = k.partition
              AND p.source_offset = k.offset_ AND p.expired_at IS NULL
            RETURNING p.source_topic, p.partition, p.source_offset, p.payload,
                      p.expires_at <= $4 AS expired
            """,
            [e.topic for e in events],
            [e.partition for e in events],
            [e.offset for e in events],
            now,
        )
        return _raw(r for r in rows if not r["expired"]), _raw(r for r in rows if r["expired"])

    async def insert_exposures(
        self, exposed: Sequence[tuple[Exposure, DecisionRecord]]
    ) -> set[str]:
        """Insert into the exposure log; return the decision ids that were new."""
        if not exposed:
            return set()
        rows = [
            (
                d.decision_id,
                d.experiment_id,
                d.visitor_id,
                d.variant_id,
                d.segment_key,
                e.event_id,
                e.occurred_at,
                d.propensity,
                d.weights_version,
                d.source,
            )
            for e, d in exposed
        ]
        inserted = await self.conn.fetch(
            """
            INSERT INTO exposure_log (decision_id, experiment_id, visitor_id, variant_id,
                                      segment_key, exposure_event_id, exposed_at, propensity,
                                      weights_version, source)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::timestamptz[], $8::float8[], $9::bigint[],
                                 $10::text[])
            ON CONFLICT (decision_id) DO NOTHING
            RETURNING decision_id
            """,
            *_cols(rows, 10),
        )
        return {r["decision_id"] for r in inserted}

    async def counted_conversions(self, event_ids: Iterable[str]) -> set[str]:
        ids = sorted(set(event_ids))
        if not ids:
            return set()
        rows = await self.conn.fetch(
            "SELECT event_id FROM conversion_log WHERE event_id = ANY($1::text[])", ids
        )
        return {r["event_id"] for r in rows}

    async def exposure_candidates(self, pairs: Iterable[Pair]) -> dict[Pair, list[ExposureRecord]]:
        """Every logged exposure of these (experiment, visitor) pairs."""
        keys = sorted(set(pairs))
        if not keys:
            return {}
        rows = await self.conn.fetch(
            """
            SELECT e.experiment_id, e.visitor_id, e.decision_id, e.variant_id, e.segment_key,
                   e.exposed_at, e.propensity, e.source, e.conversion_event_id
            FROM exposure_log e
            JOIN unnest($1::text[], $2::text[]) AS k(experiment_id, visitor_id)
              ON e.experiment_id = k.experiment_id AND e.visitor_id = k.visitor_id
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        found: dict[Pair, list[ExposureRecord]] = defaultdict(list)
        for r in rows:
            found[(r["experiment_id"], r["visitor_id"])].append(
                ExposureRecord(
                    r["decision_id"],
                    r["experiment_id"],
                    r["variant_id"],
                    r["segment_key"],
                    r["exposed_at"],
                    r["propensity"],
                    r["source"],
                    r["conversion_event_id"],
                )
            )
        return found

    async def unexposed_decisions(self, pairs: Iterable[Pair]) -> dict[Pair, list[datetime]]:
        """When the decisions of these pairs that have no exposure yet were made."""
        keys = sorted(set(pairs))
        if not keys:
            return {}
        rows = await self.conn.fetch(
            """
            SELECT d.experiment_id, d.visitor_id, d.decided_at
            FROM decision_log d
            JOIN unnest($1::text[], $2::text[]) AS k(experiment_id, visitor_id)
              ON d.experiment_id = k.experiment_id AND d.visitor_id = k.visitor_id
            WHERE NOT EXISTS (SELECT 1 FROM exposure_log e WHERE e.decision_id = d.decision_id)
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        found: dict[Pair, list[datetime]] = defaultdict(list)
        for r in rows:
            found[(r["experiment_id"], r["visitor_id"])].append(r["decided_at"])
        return found

    async def record_conversions(self, attributed: Sequence[Attributed]) -> None:
        if not attributed:
            return
        first = [a for a in attributed if not a.repeat]
        repeats = [a for a in attributed if a.repeat]
        if first:
            await self.conn.execute(
                """
                UPDATE exposure_log e
                SET converted_at = c.occurred_at, conversion_event_id = c.event_id,
                    conversion_value = c.value
                FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::float8[])
                     AS c(decision_id, event_id, occurred_at, value)
                WHERE e.decision_id = c.decision_id
                """,
                [a.exposure.decision_id for a in first],
                [a.conversion.event_id for a in first],
                [a.conversion.occurred_at for a in first],
                [a.conversion.value for a in first],
            )
        if repeats:
            per: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
            for a in repeats:
                per[a.exposure.decision_id][0] += 1
                per[a.exposure.decision_id][1] += a.conversion.value or 0.0
            ids = sorted(per)
            await self.conn.execute(
                """
                UPDATE exposure_log e
                SET repeat_conversions = e.repeat_conversions + c.n,
                    repeat_value = e.repeat_value + c.value
                FROM unnest($1::text[], $2::int[], $3::float8[]) AS c(decision_id, n, value)
                WHERE e.decision_id = c.decision_id
                """,
                ids,
                [int(per[i][0]) for i in ids],
                [per[i][1] for i in ids],
            )
        await self.conn.execute(
            """
            INSERT INTO conversion_log (event_id, decision_id, experiment_id, occurred_at,
                                        value, repeat)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                                 $5::float8[], $6::bool[])
            """,
            [a.conversion.event_id for a in attributed],
            [a.exposure.decision_id for a in attributed],
            [a.conversion.experiment_id for a in attributed],
            [a.conversion.occurred_at for a in attributed],
            [a.conversion.value for a in attributed],
            [a.repeat for a in attributed],
        )

    async def park(self, waiting: Sequence[Waiting], *, expired_at: datetime | None = None) -> None:
        """Keep what waits (or, with `expired_at`, what waited in vain) with its bytes."""
        if not waiting:
            return
        rows = [
            (
                w.event.topic,
                w.event.partition,
                w.event.offset,
                w.waiting_for,
                w.event_id,
                w.experiment_id,
                w.visitor_id,
                w.decision_id,
                w.value,
                w.occurred_at,
                w.event.value or b"",
                w.expires_at,
            )
            for w in waiting
        ]
        await self.conn.execute(
            """
            INSERT INTO pending_events (source_topic, partition, source_offset, waiting_for,
                                        event_id, experiment_id, visitor_id, decision_id, value,
                                        occurred_at, payload, expires_at, expired_at)
            SELECT *, $13::timestamptz FROM unnest(
                $1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::float8[], $10::timestamptz[], $11::bytea[],
                $12::timestamptz[])
            ON CONFLICT (source_topic, partition, source_offset) DO UPDATE
            SET waiting_for = EXCLUDED.waiting_for, expires_at = EXCLUDED.expires_at,
                expired_at = EXCLUDED.expired_at
            """,
            *_cols(rows, 12),
            expired_at,
        )

    async def write_outbox(
        self, deltas: Mapping[tuple[str, str], Mapping[str, Mapping[str, float]]]
    ) -> None:
        """The batch's deltas, one row per (experiment, segment), sent after the commit."""
        if not deltas:
            return
        keys = sorted(deltas)
        rows = await self.conn.fetch(
            """
            INSERT INTO segment_delta_outbox (experiment_id, segment_key, payload)
            SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])
            RETURNING delta_id
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [orjson.dumps(deltas[k]).decode() for k in keys],
        )
        self.outbox.extend(r["delta_id"] for r in rows)


def _raw(rows: Iterable[Mapping[str, Any]]) -> list[RawEvent]:
    events = [
        RawEvent(r["source_topic"], r["partition"], r["source_offset"], None, bytes(r["payload"]))
        for r in rows
    ]
    return sorted(events, key=lambda e: (e.topic, e.partition, e.offset))


@dataclass
class LearnBatch:
    """The owner's open transaction of one batch of segment deltas."""

    conn: asyncpg.Connection
    fresh: list[RawEvent]

    async def new_deltas(self, delta_ids: Iterable[int]) -> set[int]:
        """Record the delta ids; return those not applied before."""
        ids = sorted(set(delta_ids))
        if not ids:
            return set()
        rows = await self.conn.fetch(
            """
            INSERT INTO applied_deltas (delta_id) SELECT unnest($1::bigint[])
            ON CONFLICT DO NOTHING RETURNING delta_id
            """,
            ids,
        )
        return {r["delta_id"] for r in rows}

    async def rows(self, keys: Iterable[RowKey]) -> dict[RowKey, OwnedRow]:
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        found = await self.conn.fetch(
            """
            SELECT s.* FROM variant_segment_state s
            JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(e, s, v)
              ON s.experiment_id = k.e AND s.segment_key = k.s AND s.variant_id = k.v
            """,
            *_cols(wanted, 3),
        )
        return {
            (r["experiment_id"], r["segment_key"], r["variant_id"]): owned_row(r) for r in found
        }

    async def write(self, rows: Mapping[RowKey, OwnedRow]) -> None:
        keys = sorted(rows)
        if not keys:
            return
        stats = [rows[k].stats for k in keys]
        await self.conn.execute(
            """
            INSERT INTO variant_segment_state AS s (
                experiment_id, segment_key, variant_id, exposures, conversions,
                conversion_value, repeat_conversions, ipw_weight, ipw_weight_sq,
                ipw_conversions, ipw_conversions_sq, effective_exposures,
                effective_conversions, decayed_at, first_seen, last_seen, updated_at)
            SELECT *, now() FROM unnest(
                $1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::float8[],
                $7::bigint[], $8::float8[], $9::float8[], $10::float8[], $11::float8[],
                $12::float8[], $13::float8[], $14::timestamptz[], $15::timestamptz[],
                $16::timestamptz[])
            ON CONFLICT (experiment_id, segment_key, variant_id) DO UPDATE SET
                exposures = EXCLUDED.exposures, conversions = EXCLUDED.conversions,
                conversion_value = EXCLUDED.conversion_value,
                repeat_conversions = EXCLUDED.repeat_conversions,
                ipw_weight = EXCLUDED.ipw_weight, ipw_weight_sq = EXCLUDED.ipw_weight_sq,
                ipw_conversions = EXCLUDED.ipw_conversions,
                ipw_conversions_sq = EXCLUDED.ipw_conversions_sq,
                effective_exposures = EXCLUDED.effective_exposures,
                effective_conversions = EXCLUDED.effective_conversions,
                decayed_at = EXCLUDED.decayed_at, last_seen = EXCLUDED.last_seen,
                updated_at = now()
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [s.exposures for s in stats],
            [s.conversions for s in stats],
            [s.conversion_value for s in stats],
            [s.repeat_conversions for s in stats],
            [s.ipw_weight for s in stats],
            [s.ipw_weight_sq for s in stats],
            [s.ipw_conversions for s in stats],
            [s.ipw_conversions_sq for s in stats],
            [s.effective_exposures for s in stats],
            [s.effective_conversions for s in stats],
            [rows[k].decayed_at for k in keys],
            [rows[k].first_seen for k in keys],
            [rows[k].last_seen for k in keys],
        )
        segments = sorted({(k[0], k[1]) for k in keys})
        await self.conn.execute(  # context_segments: the analysts' per-segment totals
            "SELECT count(update_segment_stats(e, s)) FROM unnest($1::text[], $2::text[]) "
            "AS k(e, s)",
            [k[0] for k in segments],
            [k[1] for k in segments],
        )


_STATS_FIELDS = tuple(f.name for f in fields(VariantStats))


def owned_row(r: Mapping[str, Any]) -> OwnedRow:
    return OwnedRow(
        VariantStats(**{f: r[f] for f in _STATS_FIELDS}),
        r["decayed_at"],
        r["first_seen"],
        r["last_seen"],
    )
