"""`bandit-stream services …` from a clean state: start, reuse, report, stop, stale PIDs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.integration.workers import free_port

pytestmark = pytest.mark.integration


def _free_pair() -> int:
    for _ in range(50):
        port = free_port()
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import socket; socket.create_server(('127.0.0.1', {port + 1}))",
            ],
            check=False,
            capture_output=True,
        )
        if probe.returncode == 0:
            return port
    raise AssertionError("no two consecutive free ports")


@pytest.fixture
def state_dir(unique: str) -> Iterator[Path]:
    """A private state folder; Kafka's jars are linked from the main one to avoid a download."""
    main = Settings().state_dir
    path = main / f"test-services-{unique}"
    (path / "kafka").mkdir(parents=True)
    if (main / "kafka" / "libs" / ".complete").exists():
        (path / "kafka" / "libs").symlink_to(main / "kafka" / "libs")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cli(state_dir: Path, kafka_port: int, pg_port: int, *args: str) -> str:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    env.update(
        BANDIT_STATE_DIR=str(state_dir),
        BANDIT_LOCAL_KAFKA_PORT=str(kafka_port),
        BANDIT_LOCAL_POSTGRES_PORT=str(pg_port),
    )
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "services", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_up_twice_reuses_then_down_stops_what_up_started(state_dir: Path) -> None:
    kafka_port, pg_port = _free_pair(), free_port()
    try:
        first = _cli(state_dir, kafka_port, pg_port, "up")
        kafka_pid = json.loads((state_dir / "kafka" / "state.json").read_text())["pid"]
        pg_pid = int((state_dir / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
        assert f"running pid={kafka_pid}" in first and f"running pid={pg_pid}" in first

        second = _cli(state_dir, kafka_port, pg_port, "up")
        assert f"running pid={kafka_pid}" in second, "the second `up` reuses the broker"
        assert f"running pid={pg_pid}" in second, "the second `up` reuses the database"

        env = _cli(state_dir, kafka_port, pg_port, "env")
        assert f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kafka_port}" in env
        assert f"DATABASE_URL=postgresql://postgres@127.0.0.1:{pg_port}/bandit" in env
    finally:
        down = _cli(state_dir, kafka_port, pg_port, "down")
    assert "kafka" in down and "postgres" in down
    assert not Path(f"/proc/{kafka_pid}").exists() or "kafka" not in Path(
        f"/proc/{kafka_pid}/cmdline"
    ).read_text(errors="replace")
    status = _cli(state_dir, kafka_port, pg_port, "status")
    assert status.count("stopped") == 2


def test_stale_pid_file_is_detected_not_trusted(state_dir: Path) -> None:
    """After a reboot the recorded PID may be another process: it is neither reused nor killed."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (state_dir / "kafka" / "state.json").write_text(json.dumps({"pid": bystander.pid}))
        kafka_port, pg_port = _free_pair(), free_port()
        status = _cli(state_dir, kafka_port, pg_port, "status")
        assert "kafka     local" in status and "stopped" in status.splitlines()[0]
        down = _cli(state_dir, kafka_port, pg_port, "down")
        assert "nothing" in down
        assert bystander.poll() is None, "`down` never kills a process it did not start"
    finally:
        bystander.kill()
        bystander.wait()
