"""A pipeline worker as a subprocess: what the demo, the benchmarks and the tests start.

`python -m faust --loop uvloop -A <app> worker` on a free loopback port, its output in a log
file whose end is quoted when it dies or is late, its faust data directory beside that log
(not `<app id>-data` in the caller's working directory), and always stopped: SIGTERM, then
SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from streams.errors import ServiceError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WorkerProcess:
    """One faust worker subprocess."""

    def __init__(
        self,
        app: str,
        env: Mapping[str, str],
        log: Path,
        *,
        cwd: Path | None = None,
        datadir: Path | None = None,
        web_port: int | None = None,
    ) -> None:
        self.app = app
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.cwd = cwd
        self.datadir = datadir if datadir is not None else log.parent / f"{log.stem}-data"
        self.web_port = web_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> int:
        """Start the worker; return its PID."""
        cmd = [sys.executable, "-m", "faust", "--loop", "uvloop", "-A", self.app]
        cmd += ["--datadir", str(self.datadir), "worker", "-l", "info", "--web-host", "127.0.0.1"]
        cmd += ["--web-port", str(self.web_port)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def failure(self, why: str) -> ServiceError:
        return ServiceError(f"{why}; the end of {self.log}:\n{self.log_tail()}")

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            why = f"worker {self.app} exited ({self.returncode})"
            raise self.failure(why)

    def is_ready(self) -> bool:
        """`GET /ready` answers 200: replicas caught up, agents running."""
        url = f"http://127.0.0.1:{self.web_port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status) == 200
        except urllib.error.HTTPError as exc:  # 503 until the replicas caught up
            exc.close()
            return False
        except OSError:  # refused while the worker starts
            return False

    def wait_ready(self, timeout: float = 90.0, poll: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.is_ready():
                return
            time.sleep(poll)
        why = f"worker {self.app} was not ready within {timeout:.0f} s"
        raise self.failure(why)

    async def wait_ready_async(self, timeout: float = 90.0, poll: float = 0.1) -> None:
        await asyncio.to_thread(self.wait_ready, timeout, poll)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL after `timeout`. The exit code, None if it was killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to commit or flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
