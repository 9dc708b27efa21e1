"""Plain-SQL migrations from `sql/`, applied in order, once, each in its own transaction.

A session-level advisory lock serialises concurrent runs (two workers starting together), and
`schema_migrations` records each applied file with its checksum, so an edited migration that
was already applied is reported instead of silently diverging.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from streams.errors import MigrationError


def _sql_dir() -> Path:
    """`sql/` as package data: `streams/sql` links to the repo's top-level folder in a
    checkout, and is a copy of it in a built wheel (pyproject.toml's package-data)."""
    found = resources.files("streams") / "sql"
    if not isinstance(found, Path):  # pragma: no cover - only a zipped install gets here
        msg = f"streams must be installed as files, not zipped: cannot read {found}"
        raise RuntimeError(msg)
    return found


SQL_DIR = _sql_dir()
_LOCK_KEY = 0x62616E646974  # "bandit": one advisory lock for every migration run
_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    """Every `NNN_name.sql` in `directory`, by version; duplicates or none at all are errors."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            msg = f"{path.name}: migration files are named NNN_lower_case_name.sql"
            raise MigrationError(msg)
        version = int(match.group(1))
        if version in found:
            msg = f"{path.name} and {found[version].name} share version {version}"
            raise MigrationError(msg)
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    if not found:
        msg = (
            f"no migration files (NNN_name.sql) in {directory}; "
            "is the package installed without its sql/ data?"
        )
        raise MigrationError(msg)
    return [found[v] for v in sorted(found)]


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(dsn: str, directory: Path = SQL_DIR) -> list[str]:
    """Apply the migrations not applied yet; return the names applied by this call."""
    migrations = load_migrations(directory)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            return await _apply_new(conn, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def _apply_new(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    await conn.execute(_BOOKKEEPING)
    rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
    applied = {row["version"]: row for row in rows}
    done = []
    for migration in migrations:
        row = applied.get(migration.version)
        if row is not None:
            if row["checksum"] != migration.checksum:
                msg = (
                    f"{migration.name} was changed after it was applied (as {row['name']}); "
                    "add a new migration instead of editing an applied one"
                )
                raise MigrationError(msg)
            continue
        try:
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
        except asyncpg.PostgresError as exc:
            msg = f"{migration.name} failed and was rolled back: {exc}"
            raise MigrationError(msg) from exc
        done.append(migration.name)
    return done


async def applied_migrations(dsn: str) -> list[tuple[int, str]]:
    """(version, name) of every applied migration, in order."""
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        if not exists:
            return []
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        return [(row["version"], row["name"]) for row in rows]
    finally:
        await conn.close()
