"""POST /decide's pure step: bodies into records, refusals into statuses and reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.contracts import RejectReason, format_timestamp
from streams.experiments import ExperimentRegistry, new_experiment_document
from streams.pipeline.decide import prepare_visits
from streams.pipeline.events import Limits, RecentIds
from streams.pipeline.requests import (
    MAX_REQUEST_BYTES,
    MAX_VISITS_PER_REQUEST,
    Answer,
    DecideRequest,
    decided,
    parse_request,
    refused,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_event_bytes=65_536, max_future_skew=timedelta(seconds=300))


def _visit(i: int, experiment: str = "exp") -> dict[str, object]:
    return {
        "event_id": f"event-{i}",
        "experiment_id": experiment,
        "visitor_id": f"visitor-{i}",
        "occurred_at": format_timestamp(NOW),
    }


def _registry() -> ExperimentRegistry:
    registry = ExperimentRegistry()
    registry.apply("exp", new_experiment_document("exp", ["a", "b"]))
    stopped = new_experiment_document("old", ["a", "b"])
    registry.apply("old", {**stopped, "status": "stopped"})
    return registry


def _answer(body: bytes, recent: RecentIds | None = None) -> Answer | None:
    """The refusal of a body, or None when every visit in it was accepted."""
    parsed = parse_request(body)
    if isinstance(parsed, Answer):
        return parsed
    _, rejects = prepare_visits(parsed.events, _registry(), LIMITS, NOW, recent or RecentIds())
    return refused(rejects) if rejects else None


def test_one_object_is_one_record_and_an_array_many() -> None:
    one = parse_request(orjson.dumps(_visit(1)))
    many = parse_request(b"  " + orjson.dumps([_visit(1), _visit(2)]))
    assert isinstance(one, DecideRequest) and isinstance(many, DecideRequest)
    assert (len(one.events), one.many) == (1, False)
    assert (len(many.events), many.many) == (2, True)
    assert [orjson.loads(e.value or b"") for e in many.events] == [_visit(1), _visit(2)]
    assert decided([{"x": 1}], many=False).body == b'{"x":1}'
    assert decided([{"x": 1}], many=True).body == b'[{"x":1}]'


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{oops", 400, RejectReason.MALFORMED_JSON),
        (b"[oops", 400, RejectReason.MALFORMED_JSON),
        (b"[\"\xff\"]", 400, RejectReason.INVALID_UTF8),
        (b"", 400, RejectReason.MALFORMED_JSON),
        (b"[3]", 400, RejectReason.NOT_AN_OBJECT),
        (orjson.dumps({"event_id": "x"}), 400, RejectReason.SCHEMA_VIOLATION),
        (orjson.dumps(_visit(1, "nope")), 404, RejectReason.UNKNOWN_EXPERIMENT),
        (orjson.dumps(_visit(1, "old")), 409, RejectReason.EXPERIMENT_NOT_RUNNING),
        (b"{" + b" " * 70_000 + b"}", 413, RejectReason.OVERSIZED),
        (b" " * (MAX_REQUEST_BYTES + 1), 413, RejectReason.OVERSIZED),
        (orjson.dumps([_visit(i) for i in range(MAX_VISITS_PER_REQUEST + 1)]), 413,
         RejectReason.OVERSIZED),
    ],
)  # fmt: skip
def test_refusals_carry_a_status_and_the_dead_letter_reason(
    body: bytes, status: int, reason: RejectReason
) -> None:
    answer = _answer(body)
    assert answer is not None
    doc = orjson.loads(answer.body)
    assert (answer.status, doc["reason"]) == (status, reason.value)
    assert doc["detail"]


def test_an_array_lists_every_refused_visit_by_index() -> None:
    body = orjson.dumps([_visit(0), _visit(1, "nope"), {"event_id": "x"}, _visit(3)])
    answer = _answer(body)
    assert answer is not None and answer.status == 404
    doc = orjson.loads(answer.body)
    assert [(e["index"], e["reason"]) for e in doc["errors"]] == [
        (1, "unknown_experiment"),
        (2, "schema_violation"),
    ]


def test_a_retried_request_is_a_replay_but_a_repeated_event_id_is_a_duplicate() -> None:
    recent = RecentIds()
    body = orjson.dumps([_visit(0), _visit(1)])
    assert _answer(body, recent) is None
    assert _answer(body, recent) is None, "the same request again is decided again"
    answer = _answer(orjson.dumps([_visit(5), _visit(0)]), recent)
    assert answer is not None and answer.status == 409
    assert orjson.loads(answer.body)["errors"] == [
        {"index": 1, "reason": "duplicate_event", "detail": orjson.loads(answer.body)["detail"]}
    ]
