"""The learning state in Postgres: exposures, counts and consumer watermarks, batch by batch.

One transaction per consumed batch holds every effect of the batch *and* the offsets it
consumed (consumer_watermarks, locked FOR UPDATE). A batch that Kafka delivers again after a
crash or a rebalance finds its offsets already recorded and is skipped, so the counts are
exact whatever the consumer's commit did; two workers briefly owning one partition serialise
on the watermark row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import asyncpg

from streams.pipeline.decide import StickyAssignment
from streams.pipeline.events import RawEvent
from streams.pipeline.track import Attributed, Conversion, Exposure, ExposureRecord

CountKey = tuple[str, str, str]  # experiment_id, segment_key, variant_id


@dataclass
class TrackBatch:
    """The open transaction of one batch; `fresh` are the records not applied before."""

    conn: asyncpg.Connection
    fresh: list[RawEvent]
    deltas: dict[CountKey, list[float]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0.0])
    )
    exposed_pairs: set[tuple[str, str]] = field(default_factory=set)

    async def insert_exposures(self, exposures: Sequence[Exposure]) -> set[str]:
        """Insert into the exposure log; return the decision ids that were new."""
        if not exposures:
            return set()
        rows = await self.conn.fetch(
            """
            INSERT INTO exposure_log (decision_id, experiment_id, visitor_id, variant_id,
                                      segment_key, exposure_event_id, exposed_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::timestamptz[])
            ON CONFLICT (decision_id) DO NOTHING
            RETURNING decision_id, experiment_id, visitor_id, segment_key, variant_id
            """,
            [e.decision_id for e in exposures],
            [e.experiment_id for e in exposures],
            [e.visitor_id for e in exposures],
            [e.variant_id for e in exposures],
            [e.segment_key for e in exposures],
            [e.event_id for e in exposures],
            [e.occurred_at for e in exposures],
        )
        for row in rows:
            self.deltas[(row["experiment_id"], row["segment_key"], row["variant_id"])][0] += 1
            self.exposed_pairs.add((row["experiment_id"], row["visitor_id"]))
        return {row["decision_id"] for row in rows}

    async def exposure_candidates(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], list[ExposureRecord]]:
        """Every logged exposure of these (experiment, visitor) pairs, newest first."""
        if not keys:
            return {}
        rows = await self.conn.fetch(
            """
            SELECT e.experiment_id, e.visitor_id, e.decision_id, e.variant_id, e.segment_key,
                   e.exposed_at, e.conversion_event_id
            FROM exposure_log e
            JOIN unnest($1::text[], $2::text[]) AS k(experiment_id, visitor_id)
              ON e.experiment_id = k.experiment_id AND e.visitor_id = k.visitor_id
            ORDER BY e.exposed_at DESC
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
        )
        found: dict[tuple[str, str], list[ExposureRecord]] = defaultdict(list)
        for r in rows:
            found[(r["experiment_id"], r["visitor_id"])].append(
                ExposureRecord(
                    r["decision_id"],
                    r["variant_id"],
                    r["segment_key"],
                    r["exposed_at"],
                    r["conversion_event_id"],
                )
            )
        return found

    async def record_conversions(self, attributed: Sequence[Attributed]) -> None:
        if attributed:
            await self.conn.execute(
                """
                UPDATE exposure_log e
                SET converted_at = c.occurred_at, conversion_event_id = c.event_id,
                    conversion_value = c.value
                FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::float8[])
                     AS c(decision_id, event_id, occurred_at, value)
                WHERE e.decision_id = c.decision_id
                """,
                [a.exposure.decision_id for a in attributed],
                [a.conversion.event_id for a in attributed],
                [a.conversion.occurred_at for a in attributed],
                [a.conversion.value for a in attributed],
            )
        for a in attributed:
            exp = a.conversion.experiment_id
            delta = self.deltas[(exp, a.exposure.segment_key, a.exposure.variant_id)]
            delta[1] += 1
            delta[2] += a.conversion.value or 0.0

    async def park_conversions(self, waiting: Sequence[Conversion]) -> None:
        """Conversions with no exposure yet wait for it (and are reported while they wait)."""
        if not waiting:
            return
        await self.conn.execute(
            """
            INSERT INTO pending_conversions (event_id, experiment_id, visitor_id, occurred_at,
                                             value, window_seconds, source_topic, partition,
                                             source_offset, payload)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                                 $5::float8[], $6::int[], $7::text[], $8::int[], $9::bigint[],
                                 $10::bytea[])
            ON CONFLICT (event_id) DO NOTHING
            """,
            [c.event_id for c in waiting],
            [c.experiment_id for c in waiting],
            [c.visitor_id for c in waiting],
            [c.occurred_at for c in waiting],
            [c.value for c in waiting],
            [int(c.window.total_seconds()) for c in waiting],
            [c.event.topic for c in waiting],
            [c.event.partition for c in waiting],
            [c.event.offset for c in waiting],
            [c.event.value for c in waiting],
        )

    async def unpark_conversions(self, pairs: Sequence[tuple[str, str]]) -> list[Conversion]:
        """Take the waiting conversions of these (experiment, visitor) pairs back out."""
        if not pairs:
            return []
        rows = await self.conn.fetch(
            """
            DELETE FROM pending_conversions p
            USING unnest($1::text[], $2::text[]) AS k(experiment_id, visitor_id)
            WHERE p.experiment_id = k.experiment_id AND p.visitor_id = k.visitor_id
            RETURNING p.*
            """,
            [k[0] for k in pairs],
            [k[1] for k in pairs],
        )
        return [
            Conversion(
                RawEvent(r["source_topic"], r["partition"], r["source_offset"], None, r["payload"]),
                r["event_id"],
                r["experiment_id"],
                r["visitor_id"],
                r["occurred_at"],
                r["value"],
                timedelta(seconds=r["window_seconds"]),
            )
            for r in sorted(rows, key=lambda r: r["occurred_at"])
        ]

    async def _flush_counts(self) -> None:
        if not self.deltas:
            return
        keys = list(self.deltas)
        await self.conn.execute(
            """
            INSERT INTO variant_segment_state AS s (experiment_id, segment_key, variant_id,
                                                   exposures, conversions, conversion_value)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                                 $5::bigint[], $6::float8[])
            ON CONFLICT (experiment_id, segment_key, variant_id) DO UPDATE
            SET exposures = s.exposures + EXCLUDED.exposures,
                conversions = s.conversions + EXCLUDED.conversions,
                conversion_value = s.conversion_value + EXCLUDED.conversion_value,
                updated_at = now()
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [int(self.deltas[k][0]) for k in keys],
            [int(self.deltas[k][1]) for k in keys],
            [float(self.deltas[k][2]) for k in keys],
        )

    def changed_segments(self) -> set[tuple[str, str]]:
        return {(k[0], k[1]) for k in self.deltas}


class StateStore:
    """Postgres access of the stages, over one connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, size: int = 4) -> StateStore:
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
        last: dict[tuple[str, int], int] = {}
        for e in events:
            last[(e.topic, e.partition)] = max(e.offset, last.get((e.topic, e.partition), -1))
        parts = sorted(last)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO consumer_watermarks (stage, topic, partition, last_offset)
                SELECT $1, * FROM unnest($2::text[], $3::int[], $4::bigint[])
                ON CONFLICT DO NOTHING
                """,
                stage,
                [p[0] for p in parts],
                [p[1] for p in parts],
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
                [p[0] for p in parts],
                [p[1] for p in parts],
            )
            applied = {(r["topic"], r["partition"]): r["last_offset"] for r in rows}
            fresh = [e for e in events if e.offset > applied.get((e.topic, e.partition), -1)]
            batch = TrackBatch(conn, fresh)
            yield batch
            await batch._flush_counts()
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

    async def sticky(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], StickyAssignment]:
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

    async def segment_counts(
        self, experiment_id: str, segment_keys: Sequence[str] | None = None
    ) -> dict[str, dict[str, tuple[int, int]]]:
        """{segment: {variant: (exposures, conversions)}}; every segment by default."""
        rows = await self.pool.fetch(
            """
            SELECT segment_key, variant_id, exposures, conversions FROM variant_segment_state
            WHERE experiment_id = $1 AND ($2::text[] IS NULL OR segment_key = ANY($2::text[]))
            """,
            experiment_id,
            list(segment_keys) if segment_keys is not None else None,
        )
        out: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
        for r in rows:
            out[r["segment_key"]][r["variant_id"]] = (r["exposures"], r["conversions"])
        return dict(out)

    async def experiment_totals(self, experiment_id: str) -> dict[str, tuple[int, int]]:
        rows = await self.pool.fetch(
            """
            SELECT variant_id, sum(exposures)::bigint AS e, sum(conversions)::bigint AS c
            FROM variant_segment_state WHERE experiment_id = $1 GROUP BY variant_id
            """,
            experiment_id,
        )
        return {r["variant_id"]: (r["e"], r["c"]) for r in rows}
