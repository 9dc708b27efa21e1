"""The state of record in Postgres, batch by batch: one transaction per consumed batch.

Each transaction holds every effect of its batch *and* the offsets it consumed
(consumer_watermarks, locked FOR UPDATE): a batch Kafka delivers again after a crash or a
rebalance finds its offsets recorded and is skipped, whatever the consumer's commit did; two
workers briefly owning one partition serialise on the watermark row.

* `TrackBatch` (visitor partition, `streams/sink/batches.py`): decisions of record, exposure
  log, attribution, what waits, and the batch's segment deltas, written to an outbox in the
  same transaction.
* `LearnBatch` (segment partition, same module): the owner's counts, each delta applied once.
* `StateStore.snapshot` (experiment owner): every segment of an experiment at once, under
  the experiment's next allocation version.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from streams.contracts import parse_timestamp
from streams.core.snapshot import ExperimentSnapshot, SegmentSnapshot
from streams.pipeline.decide import StickyAssignment
from streams.pipeline.events import RawEvent
from streams.pipeline.learn import as_of
from streams.sink.batches import (
    LearnBatch,
    Outgoing,
    Pair,
    TrackBatch,
    owned_row,
    watermarked,
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
        self, stage: str, events: Sequence[RawEvent], also_lock: Iterable[tuple[str, int]] = ()
    ) -> AsyncIterator[TrackBatch]:
        """Open the batch's transaction; commit its effects with its offsets on exit.

        `also_lock`: other (topic, partition) watermark rows to hold (not move) meanwhile.
        """
        async with (
            self.pool.acquire() as conn,
            watermarked(conn, stage, events, also_lock) as fresh,
        ):
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

    async def partitions_due(self, known_experiments: Sequence[str], now: datetime) -> set[int]:
        """Visitor partitions with waiting records that can go on or must leave (no lock)."""
        rows = await self.pool.fetch(
            """
            SELECT DISTINCT partition FROM pending_events
            WHERE expired_at IS NULL AND expires_at <= $2
            UNION
            SELECT DISTINCT partition FROM pending_events
            WHERE expired_at IS NULL AND waiting_for = 'experiment'
              AND experiment_id = ANY($1::text[])
            """,
            list(known_experiments),
            now,
        )
        return {r["partition"] for r in rows}

    async def due_waiting(
        self, partition: int, known_experiments: Sequence[str], now: datetime, limit: int
    ) -> list[RawEvent]:
        """Up to `limit` waiting records of a visitor partition that can go on or must leave,
        oldest deadline first (read only: `TrackBatch.take_due` takes them under the lock)."""
        rows = await self.pool.fetch(
            """
            SELECT source_topic, partition, source_offset, payload FROM pending_events
            WHERE partition = $1 AND expired_at IS NULL
              AND (expires_at <= $3 OR (waiting_for = 'experiment'
                                        AND experiment_id = ANY($2::text[])))
            ORDER BY expires_at LIMIT $4
            """,
            partition,
            list(known_experiments),
            now,
            limit,
        )
        return [
            RawEvent(r["source_topic"], r["partition"], r["source_offset"], None, r["payload"])
            for r in rows
        ]

    async def forget_waiting(self, event: RawEvent) -> None:
        """Drop a waiting record (one that fails alone: it went to the dead-letter topic)."""
        await self.pool.execute(
            """
            DELETE FROM pending_events
            WHERE source_topic = $1 AND partition = $2 AND source_offset = $3
            """,
            event.topic,
            event.partition,
            event.offset,
        )

    @asynccontextmanager
    async def learn_batch(
        self, stage: str, events: Sequence[RawEvent]
    ) -> AsyncIterator[LearnBatch]:
        async with self.pool.acquire() as conn, watermarked(conn, stage, events) as fresh:
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
                {r["variant_id"]: as_of(owned_row(r), taken_at, discount) for r in seg},
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
