"""`POST /decide` on the worker's web server: decisions for back ends that are not Python.

Thin: read the body (bounded), the pure request step (`streams.pipeline.requests`), the
decide stage's own steps on this worker's replicas, the sticky lookup in Postgres, then
the decisions are sent to `decisions` (acknowledged) before the answer goes out.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from streams.pipeline.decide import decide_all, prepare_visits, sticky_keys
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


async def decide_request(rt: Runtime, request: Any) -> Answer:
    """The answer to one `POST /decide` (the decisions sent before it is returned)."""
    if not rt.replicas_ready.is_set():
        return error(503, "not_ready", "the worker is still reading the experiments; retry")
    body = await read_body(request)
    parsed = parse_request(body) if body is not None else too_large()
    if not isinstance(parsed, DecideRequest):
        return parsed
    return await decide_events(rt, parsed)


async def decide_events(rt: Runtime, parsed: DecideRequest) -> Answer:
    now = datetime.now(UTC)
    visits, rejects = prepare_visits(parsed.events, rt.registry, rt.limits, now, rt.recent_visits)
    if rejects:
        return refused(rejects)
    if not visits:
        return decided([], parsed.many)  # an empty array
    try:
        keys = sticky_keys(visits)
        sticky = await (await rt.store()).sticky(keys) if keys else {}
        decisions = decide_all(visits, rt.weights, sticky, now)
        await rt.send(DECISIONS, ((d["visitor_id"].encode(), d) for d in decisions))
    except Exception as exc:  # database or broker unavailable: the caller may retry
        log.exception("POST /decide failed")
        return error(
            503, "unavailable", f"the service could not decide now ({type(exc).__name__}); retry"
        )
    return decided(decisions, parsed.many)
