"""`db migrate` on a real Postgres: in order, once, atomically, safe when run concurrently."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from streams.errors import MigrationError
from streams.sink.migrations import applied_migrations, load_migrations, migrate

pytestmark = pytest.mark.integration


async def test_migrate_twice_applies_each_migration_once(fresh_database: str) -> None:
    every = [m.name for m in load_migrations()]
    assert await migrate(fresh_database) == every
    assert await migrate(fresh_database) == [], "the second run is a no-op"
    assert [name for _, name in await applied_migrations(fresh_database)] == every
    conn = await asyncpg.connect(fresh_database)
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert {"experiments", "variants", "schema_migrations"} <= tables


async def test_concurrent_runs_apply_each_migration_once(fresh_database: str) -> None:
    results = await asyncio.gather(*(migrate(fresh_database) for _ in range(4)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in load_migrations()), (
        "every migration applied by exactly one of the concurrent runs"
    )


async def test_failed_migration_is_rolled_back_whole(fresh_database: str, tmp_path: Path) -> None:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "002_broken.sql").write_text("CREATE TABLE b (x int); SELECT no_such_column;")
    with pytest.raises(MigrationError, match=r"002_broken\.sql failed and was rolled back"):
        await migrate(fresh_database, tmp_path)
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("SELECT to_regclass('a') IS NOT NULL")
        assert not await conn.fetchval("SELECT to_regclass('b') IS NOT NULL"), "002 left nothing"
    finally:
        await conn.close()
    assert [v for v, _ in await applied_migrations(fresh_database)] == [1]


async def test_edited_applied_migration_is_reported(fresh_database: str, tmp_path: Path) -> None:
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE a (x int);")
    await migrate(fresh_database, tmp_path)
    (tmp_path / "001_ok.sql").write_text("CREATE TABLE a (x bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(fresh_database, tmp_path)
