"""sql/005_analytics.sql on a real Postgres: views and functions against hand computations.

Fixture (experiment "e", propensities constant per cell so every sum is easy by hand):

  segment M = device:mobile|source:instagram, 1,000 decisions
    a: 400 exposures, 20 conversions, p = 0.4 → Σ1/p = 1000, Σ1/p² = 2500, Σy/p = 50, Σy/p² = 125
    b: 600 exposures, 48 conversions, p = 0.6 → Σ1/p = 1000, Σ1/p² = 1666.7, Σy/p = 80
  segment D = device:desktop|source:google, 2,000 decisions
    a: 1000 exposures, 40 conversions, p = 0.5 → Σy/p = 80
    b: 1000 exposures, 30 conversions, p = 0.5 → Σy/p = 60
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import asyncpg
import pytest

from streams.analytics.report import build_insights
from streams.core.snapshot import ExperimentSnapshot, SegmentSnapshot, VariantStats
from streams.sink.migrations import migrate

pytestmark = pytest.mark.integration

M = "device:mobile|source:instagram"
D = "device:desktop|source:google"
T1 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
T2 = datetime(2026, 11, 29, 4, 0, tzinfo=UTC)
CELLS = {  # (segment, variant): (exposures, conversions, propensity)
    (M, "a"): (400, 20, 0.4),
    (M, "b"): (600, 48, 0.6),
    (D, "a"): (1000, 40, 0.5),
    (D, "b"): (1000, 30, 0.5),
}


def _stats(n: int, c: int, p: float) -> VariantStats:
    return VariantStats(
        exposures=n, conversions=c, conversion_value=10.0 * c, ipw_weight=n / p,
        ipw_weight_sq=n / p**2, ipw_conversions=c / p, ipw_conversions_sq=c / p**2,
        effective_exposures=n, effective_conversions=c,
    )  # fmt: skip


async def _load(conn: asyncpg.Connection) -> None:
    for (segment, variant), (n, c, p) in CELLS.items():
        s = _stats(n, c, p)
        await conn.execute(
            """
            INSERT INTO variant_segment_state (experiment_id, segment_key, variant_id, exposures,
                conversions, conversion_value, ipw_weight, ipw_weight_sq, ipw_conversions,
                ipw_conversions_sq, effective_exposures, effective_conversions, first_seen,
                last_seen)
            VALUES ('e', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            """,
            segment, variant, s.exposures, s.conversions, s.conversion_value, s.ipw_weight,
            s.ipw_weight_sq, s.ipw_conversions, s.ipw_conversions_sq, s.effective_exposures,
            s.effective_conversions, T1 if variant == "a" else T2, T2,
        )  # fmt: skip


@pytest.fixture
async def conn(fresh_database: str):  # type: ignore[no-untyped-def]
    await migrate(fresh_database)
    connection = await asyncpg.connect(fresh_database)
    await _load(connection)
    try:
        yield connection
    finally:
        await connection.close()


async def test_segment_performance_by_hand(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        "SELECT * FROM v_segment_performance WHERE segment_key = $1 AND variant_id = 'a'", M
    )
    assert row["decisions"] == 1000
    assert row["traffic_share"] == pytest.approx(0.4)  # 400 / 1000
    assert row["observed_rate"] == pytest.approx(0.05)  # 20 / 400
    # Wilson, n = 400, p = 0.05, z² = 3.841459: denominator 1 + z²/n = 1.0096036;
    # centre = (0.05 + z²/800) / 1.0096036 = 0.0548018 / 1.0096036 = 0.0542806;
    # half = z · sqrt(0.05 · 0.95 / 400 + z² / 640000) / 1.0096036
    #      = 1.959964 · sqrt(0.00011875 + 0.0000060023) / 1.0096036 = 0.0216831
    assert row["wilson_low"] == pytest.approx(0.0542806 - 0.0216831, abs=1e-6)
    assert row["wilson_high"] == pytest.approx(0.0542806 + 0.0216831, abs=1e-6)
    assert row["ipw_rate"] == pytest.approx(0.05)  # Σy/p / decisions = 50 / 1000
    empty = await conn.fetch("SELECT * FROM v_segment_performance WHERE exposures = 0")
    assert empty == []


async def test_segment_lift_by_hand(conn: asyncpg.Connection) -> None:
    rows = {
        (r["segment_key"], r["variant_id"]): r
        for r in await conn.fetch("SELECT * FROM v_segment_lift WHERE experiment_id = 'e'")
    }
    mb = rows[(M, "b")]
    # b over the experiment: Σy/p = 80 + 60 = 140 over 3,000 decisions = 0.0466667;
    # in M: 80 / 1000 = 0.08 → lift 100 (0.08 / 0.0466667 - 1) = +71.4286 %
    assert mb["segment_rate"] == pytest.approx(0.08)
    assert mb["global_rate"] == pytest.approx(140 / 3000)
    assert mb["lift_pct"] == pytest.approx(100 * (0.08 / (140 / 3000) - 1))
    assert mb["lift_pct"] == pytest.approx(71.428571, abs=1e-5)
    # observed: b's global 78 / 1600 = 0.04875 → 100 (0.08 / 0.04875 - 1) = +64.1026 %
    assert mb["observed_global_rate"] == pytest.approx(0.04875)
    assert mb["observed_lift_pct"] == pytest.approx(64.102564, abs=1e-5)
    # a in D: 80 / 2000 = 0.04 against (50 + 80) / 3000 = 0.0433333 → -7.6923 %
    assert rows[(D, "a")]["lift_pct"] == pytest.approx(-7.692308, abs=1e-5)
    # the experiment's overall observed rate: 138 / 3000
    assert all(r["experiment_rate"] == pytest.approx(0.046) for r in rows.values())


async def test_views_agree_with_the_python_report(conn: asyncpg.Connection) -> None:
    segments = {
        key: SegmentSnapshot(key, {v: _stats(*CELLS[(key, v)]) for v in ("a", "b")})
        for key in (M, D)
    }
    snapshot = ExperimentSnapshot("e", ("a", "b"), T2, segments)
    report = build_insights("e", ("a", "b"), snapshot, (), now=T2)[0]["report"]
    for segment in report["segments"]:
        for cell in segment["variants"]:
            row = await conn.fetchrow(
                "SELECT * FROM v_segment_lift WHERE segment_key = $1 AND variant_id = $2",
                segment["segment_key"], cell["variant_id"],
            )  # fmt: skip
            assert row["segment_rate"] == pytest.approx(cell["rate"])
            assert row["lift_pct"] == pytest.approx(100 * cell["lift_vs_global"])


async def test_segment_functions_keep_context_segments(conn: asyncpg.Connection) -> None:
    created = await conn.fetchrow("SELECT * FROM get_or_create_segment('e', $1, NULL)", M)
    assert json.loads(created["features"]) == {"device": "mobile", "source": "instagram"}
    assert created["exposures"] == 0
    again = await conn.fetchrow("SELECT * FROM get_or_create_segment('e', $1, NULL)", M)
    assert again["first_seen"] == created["first_seen"]
    async with conn.transaction():  # as the owner does, with the counts it just wrote
        stats = await conn.fetchrow("SELECT * FROM update_segment_stats('e', $1)", M)
    # M: 400 + 600 exposures, 20 + 48 conversions, value 10 per conversion
    assert (stats["exposures"], stats["conversions"]) == (1000, 68)
    assert stats["conversion_value"] == pytest.approx(680.0)
    # first_seen: the earliest of the variants' rows (a: T1), not when the row was created
    assert (stats["first_seen"], stats["last_seen"]) == (T1, T2)
    assert json.loads(stats["features"]) == {"device": "mobile", "source": "instagram"}
    twice = await conn.fetchrow("SELECT * FROM update_segment_stats('e', $1)", M)
    assert (twice["exposures"], twice["conversions"]) == (1000, 68), "idempotent"
    fresh = await conn.fetchrow("SELECT * FROM update_segment_stats('e', $1)", D)
    assert (fresh["exposures"], fresh["conversions"], fresh["first_seen"]) == (2000, 70, T1)
    custom = await conn.fetchrow(
        """SELECT * FROM update_segment_stats('e', $1, '{"device": "desktop"}'::jsonb)""", D
    )
    assert json.loads(custom["features"]) == {"device": "desktop"}


async def test_materialized_view_refreshes_concurrently(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT update_segment_stats('e', $1)", M)
    await conn.execute("REFRESH MATERIALIZED VIEW mv_segment_analytics")
    await conn.execute(
        "UPDATE variant_segment_state SET conversions = 60, ipw_conversions = 120"
        " WHERE segment_key = $1 AND variant_id = 'a'", D,
    )  # fmt: skip
    await conn.execute("REFRESH MATERIALIZED VIEW CONCURRENTLY mv_segment_analytics")
    rows = await conn.fetch("SELECT * FROM mv_segment_analytics ORDER BY segment_key, variant_id")
    assert len(rows) == 4
    da = next(r for r in rows if r["segment_key"] == D and r["variant_id"] == "a")
    assert da["observed_rate"] == pytest.approx(0.06)  # 60 / 1000 after the update
    mb = next(r for r in rows if r["segment_key"] == M and r["variant_id"] == "b")
    assert json.loads(mb["features"]) == {"device": "mobile", "source": "instagram"}
    assert mb["lift_pct"] == pytest.approx(71.428571, abs=1e-5)


async def test_insights_history_latest_per_kind(conn: asyncpg.Connection) -> None:
    segments = {M: SegmentSnapshot(M, {v: _stats(*CELLS[(M, v)]) for v in ("a", "b")})}
    for version, at in ((1, T1), (2, T2)):
        snapshot = ExperimentSnapshot("e", ("a", "b"), at, segments)
        for doc in build_insights("e", ("a", "b"), snapshot, (), now=at, snapshot_version=version):
            await conn.execute(
                "INSERT INTO insights_history (experiment_id, kind, generated_at,"
                " snapshot_version, document) VALUES ($1, $2, $3, $4, $5::jsonb)",
                doc["experiment_id"], doc["kind"], at, doc["snapshot_version"], json.dumps(doc),
            )  # fmt: skip
    latest = await conn.fetch("SELECT * FROM v_latest_insights WHERE experiment_id = 'e'")
    assert {(r["kind"], r["snapshot_version"]) for r in latest} >= {
        ("lift_report", 2), ("recommendation", 2)
    }  # fmt: skip
    plan = await conn.fetchval(
        "EXPLAIN (FORMAT JSON) SELECT * FROM insights_history WHERE experiment_id = 'e'"
        " AND kind = 'lift_report' ORDER BY generated_at DESC LIMIT 1"
    )
    assert "insights_history_latest" in plan or "Seq Scan" in plan  # tiny table: either
