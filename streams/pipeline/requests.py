"""`POST /decide`, pure: a request body → visits as raw records, and the HTTP answers.

The body is one visit object or a JSON array of visits (the visits contract each). Each
visit becomes a `RawEvent` and goes through the decide stage's own `prepare_visits`, so
HTTP refuses exactly what the dead-letter topic would, with the same reason codes; the
status says what kind of refusal it is. An array is decided all or nothing: one refused
visit refuses the request, every refusal listed by its index.

A visit's record location is (its index in the request, a hash of its event_id): sending
the same request again (a client retrying after a timeout) is a replay of the same records,
decided again to the same decision_id, while the same event_id at another index, or
already seen on the `visits` topic, is a duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Final

import orjson

from streams.contracts import RejectReason
from streams.pipeline.events import RawEvent, Reject

HTTP_TOPIC: Final = "http:/decide"
"""The `topic` of the records a request becomes (shown in messages only)."""
MAX_REQUEST_BYTES: Final = 1024 * 1024
"""Largest request body (aiohttp's own default limit); each visit also has its own limit."""
MAX_VISITS_PER_REQUEST: Final = 1000

STATUS: Final = {
    RejectReason.OVERSIZED: 413,
    RejectReason.UNKNOWN_EXPERIMENT: 404,
    RejectReason.EXPERIMENT_NOT_RUNNING: 409,
    RejectReason.DUPLICATE_EVENT: 409,
}
"""HTTP status of a refusal by reason; every other reason is the client's error (400)."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status and JSON body."""

    status: int
    body: bytes


@dataclass(frozen=True)
class DecideRequest:
    """The visits of one request, in order; `many` when the body was an array."""

    events: list[RawEvent]
    many: bool


def parse_request(body: bytes) -> DecideRequest | Answer:
    """Split a body into one record per visit (never raises); an Answer when it cannot be."""
    if len(body) > MAX_REQUEST_BYTES:
        return too_large()
    if not body.lstrip().startswith(b"["):
        return DecideRequest([_record(0, body, _event_id_of(body))], many=False)
    try:
        items = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return error(400, RejectReason.INVALID_UTF8, "request body is not valid UTF-8")
        return error(400, RejectReason.MALFORMED_JSON, f"request body is not valid JSON: {err}")
    if len(items) > MAX_VISITS_PER_REQUEST:
        return error(
            413,
            RejectReason.OVERSIZED,
            f"request holds {len(items):,} visits; at most {MAX_VISITS_PER_REQUEST:,} per request",
        )
    records = [
        _record(i, orjson.dumps(item), item.get("event_id") if isinstance(item, dict) else None)
        for i, item in enumerate(items)
    ]
    return DecideRequest(records, many=True)


def too_large() -> Answer:
    return error(
        413,
        RejectReason.OVERSIZED,
        f"request body is larger than {MAX_REQUEST_BYTES:,} bytes; send fewer visits per request",
    )


def _event_id_of(raw: bytes) -> Any:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc.get("event_id") if isinstance(doc, dict) else None


def _record(index: int, raw: bytes, event_id: Any) -> RawEvent:
    where = 0
    if isinstance(event_id, str):
        where = int.from_bytes(blake2b(event_id.encode(), digest_size=7).digest(), "big")
    return RawEvent(HTTP_TOPIC, index, where, None, raw)


def refused(rejects: Sequence[Reject]) -> Answer:
    """The answer to a request with refused visits: the first one's status and reason."""
    errors = [
        {
            "index": r.event.partition,
            "reason": r.rejected.reason.value,
            "detail": r.rejected.detail,
        }
        for r in sorted(rejects, key=lambda r: r.event.partition)
    ]
    first = min(rejects, key=lambda r: r.event.partition).rejected
    status = STATUS.get(first.reason, 400)
    body = {"reason": first.reason.value, "detail": first.detail, "errors": errors}
    return Answer(status, orjson.dumps(body))


def error(status: int, reason: str, detail: str) -> Answer:
    """An answer refusing the whole request (`reason`: a RejectReason or a service state)."""
    return Answer(
        status,
        orjson.dumps({"reason": str(reason), "detail": detail, "errors": []}),
    )


def decided(decisions: list[dict[str, Any]], many: bool) -> Answer:
    """200 with the decision (or the array of decisions, in the order of the visits)."""
    return Answer(200, orjson.dumps(decisions if many else decisions[0]))
