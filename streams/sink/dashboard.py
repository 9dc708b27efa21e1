"""The dashboard's read-only queries of the published insights (`insights_history`).

Nothing here computes a number. The documents of an experiment's latest publication come
from `streams.sink.insights.latest_report` (what the `report` command reads too); this module
adds where each experiment's newest lift report is (one index probe: the page's ETag) and,
for the allocation over time, the `decisions` and `share` fields of its earlier lift reports,
picked out of the documents by Postgres so that only those travel. The pool is its own (two
connections, read-only transactions, a statement timeout): a dashboard left open never takes
a connection from the pipeline's stages, and cannot write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from streams.sink.insights import latest_report

HISTORY_POINTS = 240  # lift reports per experiment in the allocation-over-time chart

# The newest lift report of each experiment: one index probe each (insights_history_latest).
_LATEST = """
SELECT e.experiment_id, l.insight_id, l.generated_at, l.snapshot_version
FROM unnest($1::text[]) AS e(experiment_id)
CROSS JOIN LATERAL (
    SELECT h.insight_id, h.generated_at, h.snapshot_version FROM insights_history h
    WHERE h.experiment_id = e.experiment_id AND h.kind = 'lift_report'
    ORDER BY h.generated_at DESC, h.insight_id DESC LIMIT 1
) AS l
"""

# How many anomalies each experiment's latest publication has (for the tabs).
_ANOMALIES = """
SELECT h.experiment_id, count(*) AS anomalies
FROM insights_history h
JOIN unnest($1::text[], $2::timestamptz[]) AS p(experiment_id, generated_at)
  ON h.experiment_id = p.experiment_id AND h.generated_at = p.generated_at
WHERE h.kind = 'anomaly'
GROUP BY h.experiment_id
"""

# The shares and decisions of the experiment's last lift reports, oldest first.
_HISTORY = """
SELECT r.document->>'taken_at' AS taken_at, r.snapshot_version,
       jsonb_build_object(
           'decisions', r.document #> '{report,global,decisions}',
           'shares', (SELECT coalesce(jsonb_object_agg(v->>'variant_id', v->'share'), '{}')
                      FROM jsonb_array_elements(r.document #> '{report,global,variants}') v)
       )::text AS experiment,
       (SELECT coalesce(jsonb_object_agg(s->>'segment_key', jsonb_build_object(
                   'decisions', s->'decisions',
                   'shares', (SELECT coalesce(jsonb_object_agg(v->>'variant_id', v->'share'),
                                              '{}')
                              FROM jsonb_array_elements(s->'variants') v))), '{}')
        FROM jsonb_array_elements(r.document #> '{report,segments}') s)::text AS segments
FROM (
    SELECT h.insight_id, h.generated_at, h.snapshot_version, h.document
    FROM insights_history h
    WHERE h.experiment_id = $1 AND h.kind = 'lift_report'
    ORDER BY h.generated_at DESC, h.insight_id DESC LIMIT $2
) AS r
ORDER BY r.generated_at, r.insight_id
"""


@dataclass(frozen=True)
class Latest:
    """Where an experiment's newest publication is (what the page's ETag is made of)."""

    experiment_id: str
    insight_id: int
    generated_at: Any  # datetime, as asyncpg returns it
    snapshot_version: int


@dataclass(frozen=True)
class HistoryPoint:
    """One earlier lift report: its time, and per segment ('*': the experiment) the
    published decisions and share of each variant."""

    taken_at: str
    snapshot_version: int
    segments: dict[str, dict[str, Any]]


class InsightsReader:
    """The dashboard's queries over its own small, read-only pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, size: int = 2, timeout_ms: int = 5000) -> InsightsReader:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=size,
            server_settings={
                "default_transaction_read_only": "on",
                "statement_timeout": str(timeout_ms),
                "application_name": "bandit-stream dashboard",
            },
        )
        assert pool is not None
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def latest(self, experiment_ids: Sequence[str]) -> dict[str, Latest]:
        """The newest lift report of each experiment that has one."""
        if not experiment_ids:
            return {}
        rows = await self.pool.fetch(_LATEST, list(experiment_ids))
        return {
            r["experiment_id"]: Latest(
                r["experiment_id"], r["insight_id"], r["generated_at"], r["snapshot_version"]
            )
            for r in rows
        }

    async def anomaly_counts(self, latest: Sequence[Latest]) -> dict[str, int]:
        """Anomalies published with each of these lift reports (absent: none)."""
        if not latest:
            return {}
        rows = await self.pool.fetch(
            _ANOMALIES, [x.experiment_id for x in latest], [x.generated_at for x in latest]
        )
        return {r["experiment_id"]: int(r["anomalies"]) for r in rows}

    async def publication(self, experiment_id: str) -> list[dict[str, Any]]:
        """The documents of the experiment's latest publication, in publication order."""
        async with self.pool.acquire() as conn:
            return await latest_report(conn, experiment_id)

    async def history(self, experiment_id: str, points: int = HISTORY_POINTS) -> list[HistoryPoint]:
        """The experiment's last `points` lift reports, oldest first, reduced to the
        published decisions and shares of the experiment ('*') and of every segment."""
        rows = await self.pool.fetch(_HISTORY, experiment_id, points)
        return [
            HistoryPoint(
                r["taken_at"],
                int(r["snapshot_version"]),
                {"*": orjson.loads(r["experiment"]), **orjson.loads(r["segments"])},
            )
            for r in rows
        ]
