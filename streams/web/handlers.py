"""The dashboard's HTTP answers: the page, its two static files, the JSON state it polls.

`Dashboard` is framework-light: each method takes the aiohttp request faust hands a view
(only `.query` and `.headers` are read) and returns a `Reply` that the app turns into a
response. Read-only: GET only, no table is exposed, the database is read through its own
read-only pool (`streams.sink.dashboard.InsightsReader`). The state carries an ETag made of
each experiment's newest lift report, so a poll between two publications costs one index
probe per experiment and a 304.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import orjson

from streams.runtime import Runtime
from streams.sink.dashboard import HistoryPoint, InsightsReader
from streams.web.auth import Access, check, token_of
from streams.web.state import dashboard_state, selected

log = logging.getLogger("bandit_stream.dashboard")

ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
SECURITY_HEADERS = {
    # the page loads nothing but its own two files and its own JSON
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a ?token= never leaves in a Referer header
}
_MESSAGES = {
    Access.NO_TOKEN: (
        "This dashboard needs its token (BANDIT_DASHBOARD_TOKEN): open /dashboard?token=… "
        "or send it as 'Authorization: Bearer …'."
    ),
    Access.UNCONFIGURED: (
        "The worker's web server is reachable from other hosts (BANDIT_WEB_HOST is not a "
        "loopback address) and BANDIT_DASHBOARD_TOKEN is not set: the dashboard stays closed. "
        "Set BANDIT_DASHBOARD_TOKEN to a long random string and open /dashboard?token=…."
    ),
}


@dataclass(frozen=True)
class Reply:
    """What to answer: status, body, content type, headers."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def to_response(self, web: Any) -> Any:
        """The faust web response (`web`: the `web` argument of an `@app.page` handler)."""
        text = self.content_type.startswith("text/") or self.content_type.endswith("json")
        content_type = f"{self.content_type}; charset=utf-8" if text else self.content_type
        return web.bytes(
            self.body,
            status=self.status,
            headers={**SECURITY_HEADERS, **self.headers, "Content-Type": content_type},
        )


@cache
def static_file(name: str) -> bytes:
    """A file of `streams/web/static/` (package data: found in a checkout and in a wheel)."""
    return (resources.files("streams.web") / "static" / name).read_bytes()


def _json(status: int, value: Any, **headers: str) -> Reply:
    return Reply(
        status, orjson.dumps(value), "application/json", {"Cache-Control": "no-store", **headers}
    )


class Dashboard:
    """The dashboard of one worker."""

    def __init__(
        self,
        rt: Runtime,
        hosts: Callable[[], Iterable[str | None]],
        reader: InsightsReader | None = None,
    ) -> None:
        self.rt = rt
        self.hosts = hosts  # the addresses the web server binds and advertises, now
        self._reader = reader
        self._lock = asyncio.Lock()
        self._last_error_log = 0.0

    @property
    def refresh_s(self) -> float:
        """How often the page polls: twice per insights interval, between 1 and 5 s."""
        return min(5.0, max(1.0, self.rt.settings.insights_interval_s / 2))

    def access(self, query: Mapping[str, str], headers: Mapping[str, str]) -> Access:
        secret = self.rt.settings.dashboard_token
        token = secret.get_secret_value() if secret is not None else None
        return check(self.hosts(), token, token_of(query, headers))

    async def reader(self) -> InsightsReader:
        async with self._lock:
            if self._reader is None:
                self._reader = await InsightsReader.connect(self.rt.settings.database_dsn)
            return self._reader

    async def close(self, *args: Any, **kwargs: Any) -> None:
        """Close the read pool (connected to the worker's shutdown signal)."""
        async with self._lock:
            if self._reader is not None:
                reader, self._reader = self._reader, None
                await reader.close()

    def page(self, request: Any) -> Reply:
        """GET /dashboard: the page (it fetches its data itself)."""
        verdict = self.access(request.query, request.headers)
        if verdict is not Access.ALLOWED:
            return _refusal_page(verdict)
        return Reply(200, static_file("index.html"), "text/html", {"Cache-Control": "no-store"})

    def asset(self, name: str) -> Reply:
        """GET /dashboard/dashboard.css and .js: code, no data (served without the token,
        since a browser sends no header with a <script src>)."""
        content_type = ASSETS.get(name)
        if content_type is None:
            return Reply(404, b"not found", "text/plain")
        return Reply(200, static_file(name), content_type, {"Cache-Control": "no-cache"})

    async def state(self, request: Any) -> Reply:
        """GET /dashboard/api/state[?experiment=ID]: every experiment for the tabs, the one
        asked for (else the first) in full; 304 when nothing was published since the page's
        last poll (If-None-Match)."""
        verdict = self.access(request.query, request.headers)
        if verdict is not Access.ALLOWED:
            return _json(verdict.value, {"error": _MESSAGES[verdict]})
        experiments = self.rt.registry.experiments()
        shown = selected(experiments, request.query.get("experiment"))
        ready = self.rt.replicas_ready.is_set()
        try:
            reader = await self.reader()
            latest = await reader.latest([e.experiment_id for e in experiments])
            tag = _etag(
                ready,
                shown,
                [
                    (
                        e.experiment_id,
                        e.status,
                        e.version,
                        latest[e.experiment_id].insight_id if e.experiment_id in latest else None,
                    )
                    for e in experiments
                ],
            )
            if request.headers.get("If-None-Match") == tag:
                return Reply(
                    304, b"", "application/json", {"ETag": tag, "Cache-Control": "no-cache"}
                )
            counts = await reader.anomaly_counts(list(latest.values()))
            reported = {eid: counts.get(eid, 0) for eid in latest}
            documents: list[dict[str, Any]] = []
            history: list[HistoryPoint] = []
            if shown in latest:
                documents = await reader.publication(shown)
                history = await reader.history(shown)
        except Exception as exc:
            self._log_failure(exc)
            return _json(
                503, {"error": f"the insights cannot be read now ({type(exc).__name__}); retrying"}
            )
        body = dashboard_state(
            experiments,
            shown,
            documents,
            history,
            reported=reported,
            now=datetime.now(UTC),
            worker_ready=ready,
            insights_interval_s=self.rt.settings.insights_interval_s,
            refresh_s=self.refresh_s,
        )
        return _json(200, body, ETag=tag)

    def _log_failure(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 60:
            self._last_error_log = now
            log.warning("the dashboard cannot read the insights: %r (logged once a minute)", exc)


def _etag(ready: bool, shown: str | None, parts: list[tuple[str, str, int, int | None]]) -> str:
    digest = hashlib.sha256(orjson.dumps([ready, shown, sorted(parts, key=lambda p: p[0])]))
    return f'"{digest.hexdigest()[:32]}"'


def _refusal_page(verdict: Access) -> Reply:
    text = _MESSAGES[verdict].replace("&", "&amp;").replace("<", "&lt;")
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>bandit-stream dashboard"
        f"</title><body><h1>bandit-stream dashboard</h1><p>{text}</p></body></html>"
    )
    return Reply(verdict.value, body.encode(), "text/html", {"Cache-Control": "no-store"})
