"""Faust worker subprocesses: started, watched (`GET /ready`, exit status), always stopped.

Each worker logs to its own file in the run's work directory; its tail is quoted when it
dies or is late, and the directory is kept whenever something went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from streams.bench.pipeline.environment import Scratch
from streams.bench.pipeline.progress import BenchError, note

WORKER_READY_TIMEOUT_S = 90.0
WORKER_STOP_TIMEOUT_S = 20.0
POLL_S = 0.05  # how often the measurements look at their worker and its outputs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _http_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 2)
        return int(line.split()[1])
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class Worker:
    """One `python -m faust -A <app> worker` subprocess; its log goes to a file."""

    def __init__(self, app: str, env: dict[str, str], workdir: Path, name: str) -> None:
        self.app = app
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.workdir = workdir
        self.log = workdir / f"{name}.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "faust",
            "--loop",
            "uvloop",
            "-A",
            self.app,
            "worker",
            "-l",
            "info",
            "--web-port",
            str(self.port),
            "--web-host",
            "127.0.0.1",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-chars:]

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            msg = f"worker {self.app} exited ({self.proc.returncode}); log {self.log}:\n"
            raise BenchError(msg + self.tail())

    async def wait_ready(self, timeout: float = WORKER_READY_TIMEOUT_S) -> float:
        """perf_counter() when `GET /ready` first answered 200."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self.check_alive()
            if await _http_status(self.port, "/ready") == 200:
                return time.perf_counter()
            await asyncio.sleep(POLL_S)
        msg = f"worker {self.app} not ready in {timeout:.0f} s; log {self.log}:\n"
        raise BenchError(msg + self.tail())

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            note(
                f"worker {self.app} ignored SIGTERM for {WORKER_STOP_TIMEOUT_S:.0f} s and was "
                f"killed; log {self.log}"
            )
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    """The worker started, and stopped on the way out whatever happened meanwhile."""
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def pipeline_worker(sc: Scratch, workdir: Path, label: str) -> Worker:
    """A worker of the real pipeline (`streams.app`) on the topics and database of `sc`."""
    s = sc.settings
    assert sc.dsn is not None
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "DATABASE_URL": sc.dsn,
        "BANDIT_TOPIC_PREFIX": s.topic_prefix,
        "BANDIT_APP_ID": s.app_id,
        "BANDIT_PARTITIONS": str(s.partitions),
        "BANDIT_PROCESSING_GUARANTEE": s.processing_guarantee,
        "BANDIT_COMMIT_INTERVAL_S": str(s.commit_interval_s),
    }
    return Worker("streams.app", env, workdir, f"{label}-{sc.token}")
