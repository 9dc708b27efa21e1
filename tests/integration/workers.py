"""Faust workers as real subprocesses (`python -m faust -A … worker`), for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaustWorker:
    """One worker process; its log goes to a file the test can show when it fails."""

    def __init__(self, app: str, env: dict[str, str], log: Path, web_port: int | None = None):
        self.app = app
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.web_port = web_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> FaustWorker:
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
            str(self.web_port),
            "--web-host",
            "127.0.0.1",
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Faust logs `[^Worker]: Ready` once recovery is done and agents run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited early ({self.proc.returncode}):\n" + self.log_text()[-4000:]
                )
            if self.log_text().count("[^Worker]: Ready") >= self._ready_seen:
                self._ready_seen += 1
                return
            time.sleep(0.2)
        raise AssertionError("worker not ready in time:\n" + self.log_text()[-4000:])

    _ready_seen = 1

    def wait_http_ready(self, timeout: float = 90.0) -> None:
        """The service's own readiness: replicas caught up, agents running."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited early ({self.proc.returncode}):\n" + self.log_text()[-4000:]
                )
            try:
                url = f"http://127.0.0.1:{self.web_port}/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError("worker not ready in time:\n" + self.log_text()[-4000:])

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait: returns the exit code (0 for a clean stop)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("worker ignored SIGTERM:\n" + self.log_text()[-4000:]) from exc

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to commit or flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
