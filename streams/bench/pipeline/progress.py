"""What a run tells its user as it goes, on stderr: progress, notes, the error that stops it.

stdout is kept for the result alone (the table, or the JSON object with `--json`).
"""

from __future__ import annotations

import sys
import time


class BenchError(RuntimeError):
    """The benchmark could not measure (a service is missing, a worker died, a timeout)."""


def progress(message: str) -> None:
    print(f"[bench pipeline {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


notes: list[str] = []
"""The notes of the current run (`run` clears them); any note keeps the worker logs."""


def note(message: str) -> None:
    """Something the reader of the table must know (shown under it; logs are kept)."""
    notes.append(message)
    progress(f"NOTE: {message}")
