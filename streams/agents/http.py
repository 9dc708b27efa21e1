"""`POST /decide` on the worker's web server: decisions for back ends that are not Python.

Thin: read the body (bounded), the pure request step (`streams.pipeline.requests`), the
decide stage's own steps on this worker's replicas, then its sticky lookup in Postgres (a
database outage decides from the weights, as the stage does) and the send to `decisions`
(acknowledged before the answer goes out). Requests that arrive while a lookup and send are
in flight wait for the next one and share it (group commit): one Postgres round trip and
one acknowledged send per group instead of per request.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from streams.agents.decide import _sticky as sticky_lookup  # the decide stage's, fallback too
from streams.pipeline.decide import Visit, decide_all, prepare_visits, sticky_keys
from streams.pipeline.requests import (
    MAX_REQUEST_BYTES,
    Answer,
    DecideRequest,
    decided,
    error,
    parse_request,
    refused,
    too_large,
)
from streams.runtime import Runtime
from streams.topics import DECISIONS

log = logging.getLogger("bandit_stream.http")

Waiting = tuple[list[Visit], "asyncio.Future[list[dict[str, Any]]]"]


async def read_body(request: Any, limit: int = MAX_REQUEST_BYTES) -> bytes | None:
    """The body of an aiohttp request, None when it is larger than `limit`."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65_536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


class HttpDecider:
    """Answers `POST /decide` requests of one worker, grouping their I/O."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._waiting: list[Waiting] = []
        self._flusher: asyncio.Task[None] | None = None

    async def answer(self, request: Any) -> Answer:
        """The answer to one request (its decisions sent before it is returned)."""
        if not self.rt.replicas_ready.is_set():
            return error(503, "not_ready", "the worker is still reading the experiments; retry")
        body = await read_body(request)
        parsed = parse_request(body) if body is not None else too_large()
        if not isinstance(parsed, DecideRequest):
            return parsed
        rt = self.rt
        visits, rejects = prepare_visits(
            parsed.events, rt.registry, rt.limits, datetime.now(UTC), rt.recent_visits
        )
        if rejects:
            return refused(rejects)
        if not visits:
            return decided([], parsed.many)  # an empty array
        try:
            decisions = await self._decide(visits)
        except Exception as exc:  # database or broker unavailable: the caller may retry
            return error(
                503, "unavailable", f"the service could not decide now ({type(exc).__name__})"
            )
        return decided(decisions, parsed.many)

    async def _decide(self, visits: list[Visit]) -> list[dict[str, Any]]:
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((visits, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # requests read in the same loop iteration join this group
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                decisions = await self._decide_group([v for visits, _ in group for v in visits])
            except Exception as exc:
                log.exception("POST /decide: %d requests failed", len(group))
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for visits, future in group:
                if not future.done():
                    future.set_result(decisions[start : start + len(visits)])
                start += len(visits)

    async def _decide_group(self, visits: list[Visit]) -> list[dict[str, Any]]:
        rt = self.rt
        sticky = await sticky_lookup(rt, sticky_keys(visits))
        decisions = decide_all(visits, rt.weights, sticky, datetime.now(UTC))
        await rt.send(DECISIONS, ((d["visitor_id"].encode(), d) for d in decisions))
        return decisions


_deciders: dict[int, HttpDecider] = {}


async def decide_request(rt: Runtime, request: Any) -> Answer:
    """The answer to one `POST /decide` on the worker of `rt`."""
    decider = _deciders.get(id(rt))
    if decider is None:
        decider = _deciders[id(rt)] = HttpDecider(rt)
    return await decider.answer(request)
