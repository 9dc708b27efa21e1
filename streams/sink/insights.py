"""Reading the published insights back from `insights_history` (read only).

The experiment owner writes them (`StateStore.record_insights`); the `report` command and the
dashboard read them here, so that every person sees the numbers the insights topic carried.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson


async def latest_report(conn: asyncpg.Connection, experiment_id: str) -> list[dict[str, Any]]:
    """The documents of the experiment's latest publication (one lift report, its anomalies
    and recommendations: everything generated with the newest lift report)."""
    rows = await conn.fetch(
        """
        SELECT document::text AS document FROM insights_history
        WHERE experiment_id = $1 AND generated_at = (
            SELECT max(generated_at) FROM insights_history
            WHERE experiment_id = $1 AND kind = 'lift_report')
        ORDER BY insight_id
        """,
        experiment_id,
    )
    return [orjson.loads(r["document"]) for r in rows]


async def lift_history(
    conn: asyncpg.Connection, experiment_id: str, limit: int = 500
) -> list[dict[str, Any]]:
    """The experiment's lift reports, oldest first (the last `limit`)."""
    rows = await conn.fetch(
        """
        SELECT document::text AS document FROM (
            SELECT document, generated_at, insight_id FROM insights_history
            WHERE experiment_id = $1 AND kind = 'lift_report'
            ORDER BY generated_at DESC, insight_id DESC LIMIT $2) recent
        ORDER BY generated_at, insight_id
        """,
        experiment_id,
        limit,
    )
    return [orjson.loads(r["document"]) for r in rows]


async def experiments_with_insights(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT DISTINCT experiment_id FROM insights_history ORDER BY 1")
    return [r["experiment_id"] for r in rows]
