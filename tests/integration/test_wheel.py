"""The built wheel carries `sql/` and `schemas/`: installed outside the checkout, it migrates a
fresh database and validates events with its own copy of the contracts.

The wheel is built from a copy of the sources (not in the shared checkout) and installed with
--no-deps into a venv of its own; the dependencies come from this venv's site-packages through
a .pth file, so nothing is downloaded beyond what the build backend may need.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import site
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import asyncpg
import pytest

from streams.errors import MigrationError
from streams.sink.migrations import migrate
from tests.conftest import Services

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
_SOURCES = ("pyproject.toml", "README.md", "streams", "sql", "schemas")


def _run(
    args: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    for name in _SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    # The locked setuptools (build-system.requires) builds offline; an older one cannot.
    recent = int(metadata.version("setuptools").split(".")[0]) >= 77
    isolation = ["--no-build-isolation"] if recent else []
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", dist, src])
    (wheel,) = dist.glob("bandit_stream-*.whl")
    return wheel


def _venv_with(wheel: Path, tmp: Path) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
          "--no-index", wheel])  # fmt: skip
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    deps = "\n".join(site.getsitepackages())  # this venv's: the dependencies, not the checkout
    (Path(purelib.stdout.strip()) / "_bandit_deps.pth").write_text(deps + "\n")
    return venv


def test_installed_wheel_migrates_and_validates(
    tmp_path: Path, services: Services, fresh_database: str
) -> None:
    venv = _venv_with(_build_wheel(tmp_path), tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"DATABASE_URL": fresh_database, "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap_servers}

    migrated = _run([venv / "bin" / "bandit-stream", "db", "migrate"], cwd=elsewhere, env=env)
    assert "applied: 001_" in migrated.stdout, migrated.stdout

    async def tables() -> set[str]:
        conn = await asyncpg.connect(fresh_database)
        try:
            return {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
        finally:
            await conn.close()

    assert {"experiments", "variants", "schema_migrations", "variant_segment_state"} <= (
        asyncio.run(tables())
    )

    probe = """
import json, sys
from datetime import UTC, datetime, timedelta
import orjson, streams
from streams.contracts import SCHEMA_DIR, decode_event, load_schema
visit = load_schema("visits")["examples"][0]
kw = dict(max_bytes=65536, now=datetime.now(UTC), max_future_skew=timedelta(days=36500))
ok = decode_event("visits", orjson.dumps(visit), **kw)
bad = decode_event("visits", b'{"event_id": 1}', **kw)
print(json.dumps({"package": streams.__file__, "schemas": str(SCHEMA_DIR),
                  "ok": ok == visit, "bad": getattr(bad, "reason", None)}))
"""
    seen = json.loads(_run([venv / "bin" / "python", "-c", probe], cwd=elsewhere, env=env).stdout)
    assert seen["package"].startswith(str(venv)), f"imported from the checkout: {seen}"
    assert seen["schemas"].startswith(str(venv)), seen
    assert seen["ok"], "the schema's own example validates with the installed contracts"
    assert seen["bad"] == "schema_violation"


def test_migrate_without_migration_files_fails_loudly(tmp_path: Path) -> None:
    """A package that lost its sql/ must not report "up to date" and apply nothing."""
    with pytest.raises(MigrationError, match="no migration files"):
        asyncio.run(migrate("postgresql://nobody@127.0.0.1:1/none", tmp_path))
