"""Small process and port helpers shared by the local Kafka and Postgres services."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streams.errors import ServiceError


def pid_alive(pid: int, must_contain: str) -> bool:
    """True when `pid` runs and its command line contains `must_contain`.

    A PID file survives a reboot, and the number may then belong to another process: the
    command line check is what makes a stale PID file detectable instead of trusted.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        state = "?"
    return state != "Z" and must_contain in cmdline


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None) -> None:
    """Poll `check` until it is true; fail with the log's location after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    where = f"; see its log: {log}" if log else ""
    msg = f"{what} did not become ready within {timeout:.0f} s{where}"
    raise ServiceError(msg)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def is_root() -> bool:
    return os.geteuid() == 0


def apt_install(packages: Sequence[str], why: str) -> None:
    """Install Debian packages when we are root and apt is there; else say what is missing."""
    if not (is_root() and shutil.which("apt-get")):
        msg = f"{why}: install {' '.join(packages)} (no apt-get as root here to do it for you)"
        raise ServiceError(msg)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(packages)} with apt-get ({why})", flush=True)
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env)


def run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise ServiceError with its output."""
    done = subprocess.run(list(cmd), capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        msg = f"command failed ({done.returncode}): {' '.join(cmd)}\n{tail}"
        raise ServiceError(msg)
    return done


def terminate(pid: int, must_contain: str, timeout: float = 20.0) -> bool:
    """SIGTERM `pid` (if it is still ours) and wait for it to exit; SIGKILL after timeout."""
    if not pid_alive(pid, must_contain):
        return False
    os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, must_contain):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    return True
