"""Faust workers as real subprocesses (`python -m faust -A … worker`), for integration tests."""

from __future__ import annotations

import time
from pathlib import Path

from streams.services.worker import WorkerProcess, free_port

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "FaustWorker", "free_port"]


class FaustWorker(WorkerProcess):
    """A worker started from the repo root (so `tests.…` apps import), asserted on."""

    def __init__(self, app: str, env: dict[str, str], log: Path) -> None:
        super().__init__(app, env, log, cwd=REPO)

    def start(self) -> FaustWorker:  # type: ignore[override]  # chaining: .start() in tests
        super().start()
        return self

    def wait_log_ready(self, timeout: float = 90.0) -> None:
        """For apps without a /ready page: faust logs `[^Worker]: Ready` once agents run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if "[^Worker]: Ready" in self.log_text():
                return
            time.sleep(0.2)
        raise AssertionError("worker not ready in time:\n" + self.log_tail(60))

    def wait_http_ready(self, timeout: float = 90.0) -> None:
        self.wait_ready(timeout)

    def stop(self, timeout: float = 60.0) -> int | None:
        code = super().stop(timeout)
        assert code is not None, "worker ignored SIGTERM:\n" + self.log_tail(60)
        return code
