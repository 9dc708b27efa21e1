"""Faust worker subprocesses: started, watched (`GET /ready`, exit status), always stopped.

Each worker logs to its own file in the run's work directory; its tail is quoted when it
dies or is late, and the directory is kept whenever something went wrong.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from streams.bench.pipeline.environment import Scratch
from streams.bench.pipeline.progress import BenchError, note
from streams.errors import ServiceError
from streams.services.worker import WorkerProcess

WORKER_READY_TIMEOUT_S = 90.0
WORKER_STOP_TIMEOUT_S = 20.0
POLL_S = 0.05  # how often the measurements look at their worker and its outputs


class Worker(WorkerProcess):
    """A worker of a measurement: its failures are the benchmark's (BenchError)."""

    def __init__(self, app: str, env: dict[str, str], workdir: Path, name: str) -> None:
        super().__init__(app, env, workdir / f"{name}.log", cwd=workdir)

    def check_alive(self) -> None:
        try:
            super().check_alive()
        except ServiceError as exc:
            raise BenchError(str(exc)) from None

    async def ready_at(self, timeout: float = WORKER_READY_TIMEOUT_S) -> float:
        """perf_counter() when `GET /ready` first answered 200."""
        try:
            await self.wait_ready_async(timeout, POLL_S)
        except ServiceError as exc:
            raise BenchError(str(exc)) from None
        return time.perf_counter()

    def stop(self, timeout: float = WORKER_STOP_TIMEOUT_S) -> int | None:
        code = super().stop(timeout)
        if code is None:
            note(
                f"worker {self.app} ignored SIGTERM for {timeout:.0f} s and was killed; "
                f"log {self.log}"
            )
        return code


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
    assert sc.dsn is not None
    env = sc.settings.environment() | {"DATABASE_URL": sc.dsn}
    return Worker("streams.app", env, workdir, f"{label}-{sc.token}")
