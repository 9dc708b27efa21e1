"""The state of record in Postgres, batch by batch: one transaction per consumed batch.

Each transaction holds every effect of its batch *and* the offsets it consumed
(consumer_watermarks, locked FOR UPDATE): a batch Kafka delivers again after a crash or a
rebalance finds its offsets recorded and is skipped, whatever the consumer's commit did; two
workers briefly owning one partition serialise on the watermark row.

* `TrackBatch` (visitor partition): decisions of record, exposure log, attribution, what
  waits, and the segment deltas of the batch, written to an outbox in the same transaction.
* `LearnBatch` (segment partition): the owner's counts, each delta applied once.
* `StateStore.snapshot` (experiment owner): every segment of an experiment at once, under
  the experiment's next allocation version.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from streams.contracts import parse_timestamp
from streams.core.snapshot import ExperimentSnapshot, SegmentSnapshot, VariantStats
from streams.pipeline.decide import StickyAssignment
from streams.pipeline.events import RawEvent
from streams.pipeline.learn import OwnedRow, RowKey, as_of
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
async def _watermarked(
    conn: asyncpg.Connection, stage: str, events: Sequence[RawEvent]
) -> AsyncIterator[list[RawEvent]]:
    """A transaction that skips the records already applied and records the new offsets."""
    last: dict[tuple[str, int], int] = {}
    for e in events:
        last[(e.topic, e.partition)] = max(e.offset, last.get((e.topic, e.partition), -1))
    parts = sorted(last)
    topics, partitions = [p[0] for p in parts], [p[1] for p in parts]
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
            [-1] * len(parts),
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
            topics,
            partitions,
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
        if not ids and not keys:
            return []
        rows = await self.conn.fetch(
            """
            DELETE FROM pending_events p
            WHERE p.expired_at IS NULL AND (
                (p.waiting_for = 'decision' AND p.decision_id = ANY($1::text[]))
                OR (p.waiting_for = 'exposure' AND (p.experiment_id, p.visitor_id) IN (
                    SELECT * FROM unnest($2::text[], $3::text[]))))
            RETURNING p.source_topic, p.partition, p.source_offset, p.payload
            """,
            ids,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return _raw(rows)

    async def take_due(
        self, partition: int, known_experiments: Sequence[str], now: datetime, limit: int
    ) -> tuple[list[RawEvent], list[RawEvent]]:
        """(records whose experiment is now known, records whose wait is over), taken out."""
        rows = await self.conn.fetch(
            """
            DELETE FROM pending_events p
            WHERE (p.source_topic, p.partition, p.source_offset) IN (
                SELECT source_topic, partition, source_offset FROM pending_events
                WHERE partition = $1 AND expired_at IS NULL
                  AND (expires_at <= $3 OR (waiting_for = 'experiment'
                                            AND experiment_id = ANY($2::text[])))
                ORDER BY expires_at LIMIT $4)
            RETURNING p.source_topic, p.partition, p.source_offset, p.payload,
                      p.expires_at <= $3 AS expired
            """,
            partition,
            list(known_experiments),
            now,
            limit,
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
        return {(r["experiment_id"], r["segment_key"], r["variant_id"]): _owned(r) for r in found}

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


_STATS_FIELDS = (
    "exposures",
    "conversions",
    "conversion_value",
    "repeat_conversions",
    "ipw_weight",
    "ipw_weight_sq",
    "ipw_conversions",
    "ipw_conversions_sq",
    "effective_exposures",
    "effective_conversions",
)


def _owned(r: Mapping[str, Any]) -> OwnedRow:
    return OwnedRow(
        VariantStats(**{f: r[f] for f in _STATS_FIELDS}),
        r["decayed_at"],
        r["first_seen"],
        r["last_seen"],
    )


@dataclass(frozen=True)
class Snapshot:
    """An experiment's snapshot and the version its publication must carry."""

    snapshot: ExperimentSnapshot
    version: int


class StateStore:
    """Postgres access of the stages, over one connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, size: int = 6) -> StateStore:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=size)
        assert pool is not None
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def track_batch(
        self, stage: str, events: Sequence[RawEvent]
    ) -> AsyncIterator[TrackBatch]:
        """Open the batch's transaction; commit its effects with its offsets on exit."""
        async with self.pool.acquire() as conn, _watermarked(conn, stage, events) as fresh:
            yield TrackBatch(conn, fresh)

    @asynccontextmanager
    async def waiting_batch(
        self, stage: str, topics: Sequence[str], partition: int
    ) -> AsyncIterator[TrackBatch]:
        """A transaction over one visitor partition's waiting records (no new offsets).

        It locks the partition's watermark rows as a track batch does, so it never runs
        beside a batch of the same partition, whichever worker holds it.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                SELECT 1 FROM consumer_watermarks
                WHERE stage = $1 AND topic = ANY($2::text[]) AND partition = $3
                ORDER BY topic, partition FOR UPDATE
                """,
                stage,
                sorted(topics),
                partition,
            )
            yield TrackBatch(conn, [])

    @asynccontextmanager
    async def learn_batch(
        self, stage: str, events: Sequence[RawEvent]
    ) -> AsyncIterator[LearnBatch]:
        async with self.pool.acquire() as conn, _watermarked(conn, stage, events) as fresh:
            yield LearnBatch(conn, fresh)

    async def unsent_outbox(self, older_than_s: float, limit: int = 1000) -> list[Outgoing]:
        """Deltas committed but not confirmed sent (a crash between commit and send)."""
        rows = await self.pool.fetch(
            """
            SELECT delta_id, experiment_id, segment_key, payload::text AS payload
            FROM segment_delta_outbox
            WHERE created_at < now() - make_interval(secs => $1)
            ORDER BY delta_id LIMIT $2
            """,
            older_than_s,
            limit,
        )
        return [
            (r["delta_id"], r["experiment_id"], r["segment_key"], r["payload"].encode())
            for r in rows
        ]

    async def outbox_rows(self, delta_ids: Sequence[int]) -> list[Outgoing]:
        rows = await self.pool.fetch(
            """
            SELECT delta_id, experiment_id, segment_key, payload::text AS payload
            FROM segment_delta_outbox WHERE delta_id = ANY($1::bigint[]) ORDER BY delta_id
            """,
            list(delta_ids),
        )
        return [
            (r["delta_id"], r["experiment_id"], r["segment_key"], r["payload"].encode())
            for r in rows
        ]

    async def sent(self, delta_ids: Sequence[int]) -> None:
        if delta_ids:
            await self.pool.execute(
                "DELETE FROM segment_delta_outbox WHERE delta_id = ANY($1::bigint[])",
                list(delta_ids),
            )

    async def prune_applied(self, older_than_days: float = 7.0) -> None:
        await self.pool.execute(
            "DELETE FROM applied_deltas WHERE applied_at < now() - make_interval(days => $1)",
            int(older_than_days),
        )

    async def sticky(self, keys: Sequence[Pair]) -> dict[Pair, StickyAssignment]:
        """The latest exposure of each (experiment, visitor): what a sticky visitor keeps."""
        if not keys:
            return {}
        rows = await self.pool.fetch(
            """
            SELECT DISTINCT ON (e.experiment_id, e.visitor_id)
                   e.experiment_id, e.visitor_id, e.variant_id, e.segment_key
            FROM exposure_log e
            JOIN unnest($1::text[], $2::text[]) AS k(experiment_id, visitor_id)
              ON e.experiment_id = k.experiment_id AND e.visitor_id = k.visitor_id
            ORDER BY e.experiment_id, e.visitor_id, e.exposed_at DESC
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        return {
            (r["experiment_id"], r["visitor_id"]): StickyAssignment(
                r["variant_id"], r["segment_key"]
            )
            for r in rows
        }

    async def read_snapshot(
        self,
        conn: asyncpg.Connection,
        experiment_id: str,
        variant_ids: tuple[str, ...],
        discount: float = 1.0,
    ) -> ExperimentSnapshot:
        """Every segment of the experiment, effective counts decayed to the snapshot's time."""
        rows = await conn.fetch(
            """
            SELECT *, now() AS taken_at FROM variant_segment_state WHERE experiment_id = $1
            """,
            experiment_id,
        )
        waiting = await conn.fetchrow(
            """
            SELECT count(*) FILTER (WHERE source_topic LIKE '%conversions') AS conversions,
                   count(*) FILTER (WHERE source_topic LIKE '%exposures') AS exposures,
                   now() AS taken_at
            FROM pending_events WHERE experiment_id = $1 AND expired_at IS NOT NULL
            """,
            experiment_id,
        )
        assert waiting is not None
        by_segment: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in rows:
            by_segment[r["segment_key"]].append(r)
        taken_at = waiting["taken_at"]
        segments = {
            key: SegmentSnapshot(
                key,
                {r["variant_id"]: as_of(_owned(r), taken_at, discount) for r in seg},
                min(r["first_seen"] for r in seg),
                max(r["last_seen"] for r in seg),
            )
            for key, seg in by_segment.items()
        }
        return ExperimentSnapshot(
            experiment_id,
            variant_ids,
            taken_at,
            segments,
            unattributed_conversions=int(waiting["conversions"]),
            expired_exposures=int(waiting["exposures"]),
        )

    async def current_snapshot(
        self, experiment_id: str, variant_ids: tuple[str, ...], discount: float = 1.0
    ) -> Snapshot:
        """The experiment's snapshot now, with the last version published (read only)."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            version = await conn.fetchval(
                "SELECT version FROM allocation_versions WHERE experiment_id = $1", experiment_id
            )
            snapshot = await self.read_snapshot(conn, experiment_id, variant_ids, discount)
        return Snapshot(snapshot, int(version or 0))

    async def record_insights(self, documents: Sequence[Mapping[str, Any]]) -> None:
        """Keep the published insights (insights_history: the analysts' record and the
        `report` command's source)."""
        if not documents:
            return
        await self.pool.execute(
            """
            INSERT INTO insights_history (experiment_id, kind, generated_at, snapshot_version,
                                          document)
            SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[],
                                 $5::jsonb[])
            """,
            [d["experiment_id"] for d in documents],
            [d["kind"] for d in documents],
            [parse_timestamp(d["generated_at"]) for d in documents],
            [int(d.get("snapshot_version", 0)) for d in documents],
            [orjson.dumps(d).decode() for d in documents],
        )

    @asynccontextmanager
    async def snapshot(
        self, experiment_id: str, variant_ids: tuple[str, ...], discount: float = 1.0
    ) -> AsyncIterator[Snapshot]:
        """Lock the experiment's version row, read every segment, yield the next version.

        The version is recorded when the block exits normally (the caller published); an
        exception leaves it unused. Owners serialise on the row, so a later version always
        comes with a later snapshot.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """
                INSERT INTO allocation_versions (experiment_id, version) VALUES ($1, 0)
                ON CONFLICT (experiment_id) DO UPDATE SET experiment_id = EXCLUDED.experiment_id
                RETURNING version
                """,
                experiment_id,
            )
            assert row is not None
            version = int(row["version"]) + 1
            snapshot = await self.read_snapshot(conn, experiment_id, variant_ids, discount)
            yield Snapshot(snapshot, version)
            await conn.execute(
                "UPDATE allocation_versions SET version = $2, published_at = now() "
                "WHERE experiment_id = $1",
                experiment_id,
                version,
            )
