"""A private PostgreSQL cluster on 127.0.0.1 for development, the demo and the tests.

Used only when DATABASE_URL is not set. Debian's server binaries are installed when missing;
initdb and the server refuse to run as root, so as root they run as the `postgres` user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from streams.errors import ServiceError
from streams.services import process
from streams.settings import Settings

DATABASE = "bandit"


@dataclass(frozen=True)
class PostgresStatus:
    running: bool
    dsn: str
    pid: int | None
    log: Path
    started_by_us: bool


def find_bindir() -> Path | None:
    """The newest Debian PostgreSQL server bin directory (with initdb and pg_ctl)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class LocalPostgres:
    """Install, initialise, start, stop and report the project's own cluster."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "postgres"
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.log = self.root / "postgres.log"
        self.port = settings.local_postgres_port
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        """initdb and postgres refuse root: run them as the `postgres` user then."""
        if not process.is_root():
            return cmd
        return ["runuser", "-u", "postgres", "--", *cmd]

    def _chown(self, *paths: Path) -> None:
        if not process.is_root():
            return
        user = pwd.getpwnam("postgres")
        for path in paths:
            os.chown(path, user.pw_uid, user.pw_gid)

    def ensure_binaries(self) -> Path:
        bindir = find_bindir()
        if bindir is None:
            process.apt_install(["postgresql"], "the local database needs PostgreSQL's server")
            bindir = find_bindir()
        if bindir is None:
            msg = "PostgreSQL's initdb/pg_ctl were not found after installing `postgresql`"
            raise ServiceError(msg)
        if process.is_root():
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                process.run(["useradd", "--system", "--no-create-home", "postgres"])
        return bindir

    def _postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if process.pid_alive(pid, str(self.data)) else None

    def up(self, timeout: float = 60.0) -> PostgresStatus:
        """Start the cluster unless ours already runs; create the database; return status."""
        pid = self._postmaster_pid()
        if pid is not None:
            self._ensure_database(timeout)
            return PostgresStatus(True, self.dsn, pid, self.log, started_by_us=False)
        if process.port_open("127.0.0.1", self.port):
            msg = (
                f"port {self.port} on 127.0.0.1 is taken by a process this project did not "
                "start; set BANDIT_LOCAL_POSTGRES_PORT to a free port, or DATABASE_URL to use it"
            )
            raise ServiceError(msg)
        bindir = self.ensure_binaries()
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        self._chown(self.root, self.sockets)
        if not (self.data / "PG_VERSION").exists():
            shutil.rmtree(self.data, ignore_errors=True)
            process.run(
                self._as_owner(
                    [
                        str(bindir / "initdb"),
                        "-D",
                        str(self.data),
                        "--auth=trust",
                        "-U",
                        "postgres",
                        "--encoding=UTF8",
                        "--no-locale",
                        "--no-sync",
                    ]
                )
            )
        if not self.log.exists():
            self.log.touch()
        self._chown(self.log)
        # a postmaster.pid left by a crash or reboot is stale: pg_ctl handles it itself
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.sockets} "
            "-c max_connections=200 -c shared_buffers=128MB"
        )
        process.run(
            self._as_owner(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ]
            )
        )
        self._ensure_database(timeout)
        return PostgresStatus(True, self.dsn, self._postmaster_pid(), self.log, True)

    def _ensure_database(self, timeout: float) -> None:
        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        asyncio.run(create_database_if_missing(admin, DATABASE, timeout))

    def down(self) -> bool:
        """Stop our cluster (fast shutdown); True if one was running."""
        if self._postmaster_pid() is None:
            return False
        bindir = find_bindir()
        if bindir is None:
            return False
        process.run(
            self._as_owner(
                [str(bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            )
        )
        return True

    def status(self) -> PostgresStatus:
        pid = self._postmaster_pid()
        return PostgresStatus(pid is not None, self.dsn, pid, self.log, pid is not None)


async def create_database_if_missing(admin_dsn: str, name: str, timeout: float) -> None:
    import asyncpg  # local import: the CLI starts faster without it

    conn = await asyncpg.connect(admin_dsn, timeout=timeout)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def database_answers(dsn: str, timeout: float = 3.0) -> bool:
    """True when `dsn` accepts a connection and a query."""
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    try:
        return bool(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()
