"""The decide step without Kafka: validation, segments, weights, stickiness, determinism."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.contracts import format_timestamp, validate
from streams.experiments import ExperimentRegistry, new_experiment_document
from streams.pipeline.decide import (
    StickyAssignment,
    decide,
    decide_all,
    decision_id,
    prepare_visit,
    prepare_visits,
    sticky_keys,
)
from streams.pipeline.events import Limits, RawEvent, RecentIds, Reject
from streams.pipeline.replica import WeightsReplica

pytestmark = pytest.mark.unit
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_event_bytes=65_536, max_future_skew=timedelta(minutes=5))
IPHONE_INSTAGRAM = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.18.84"
)


def registry(**kwargs: object) -> ExperimentRegistry:
    reg = ExperimentRegistry()
    doc = new_experiment_document(
        "exp", ["a", "b", "c"], context_features=["device", "source"], now=NOW, **kwargs
    )
    reg.apply("exp", doc)
    return reg


def raw(doc: dict, offset: int = 0, partition: int = 0) -> RawEvent:
    return RawEvent("visits", partition, offset, doc["visitor_id"].encode(), orjson.dumps(doc))


def visit_doc(event_id: str = "e1", visitor: str = "v1", experiment: str = "exp") -> dict:
    return {
        "event_id": event_id,
        "experiment_id": experiment,
        "visitor_id": visitor,
        "occurred_at": format_timestamp(NOW - timedelta(seconds=1)),
        "context": {"user_agent": IPHONE_INSTAGRAM, "utm_source": "instagram"},
    }


def test_a_visit_gets_a_valid_decision_in_its_segment() -> None:
    visits, rejects = prepare_visits([raw(visit_doc())], registry(), LIMITS, NOW, RecentIds())
    assert rejects == []
    decision = decide(visits[0], WeightsReplica(), None, NOW)
    assert validate("decisions", decision) is None
    assert decision["segment_key"] == "device:mobile|source:instagram"
    assert decision["source"] == "uniform" and decision["propensity"] == pytest.approx(1 / 3)
    assert decision["decision_id"] == decision_id("exp", "e1")


def test_replayed_visit_gets_the_same_decision() -> None:
    reg, weights = registry(), WeightsReplica()
    weights.apply(_allocation("device:mobile|source:instagram", {"a": 0.2, "b": 0.5, "c": 0.3}))
    first, _ = prepare_visits([raw(visit_doc())], reg, LIMITS, NOW, RecentIds())
    again, _ = prepare_visits([raw(visit_doc())], reg, LIMITS, NOW, RecentIds())
    assert decide(first[0], weights, None, NOW) == decide(again[0], weights, None, NOW)


def test_weights_decide_in_proportion() -> None:
    """Over 6000 visits the share of b is 0.5 ± 4.5 standard errors (sqrt(.25/6000))."""
    reg, weights = registry(), WeightsReplica()
    weights.apply(_allocation("device:mobile|source:instagram", {"a": 0.2, "b": 0.5, "c": 0.3}))
    events = [raw(visit_doc(f"e{i}", f"v{i}"), offset=i) for i in range(6000)]
    visits, _ = prepare_visits(events, reg, LIMITS, NOW, RecentIds())
    decisions = decide_all(visits, weights, {}, NOW)
    share_b = sum(d["variant_id"] == "b" for d in decisions) / len(decisions)
    assert abs(share_b - 0.5) < 4.5 * (0.25 / 6000) ** 0.5
    assert {d["source"] for d in decisions} == {"pooled"}
    b = next(d for d in decisions if d["variant_id"] == "b")
    assert b["propensity"] == pytest.approx(0.5) and b["weights_version"] == 7


def test_unseen_segment_uses_the_experiment_weights() -> None:
    reg, weights = registry(), WeightsReplica()
    weights.apply(_allocation("*", {"a": 0.0, "b": 1.0, "c": 0.0}, source="global"))
    visits, _ = prepare_visits([raw(visit_doc())], reg, LIMITS, NOW, RecentIds())
    decision = decide(visits[0], weights, None, NOW)
    assert (decision["variant_id"], decision["source"]) == ("b", "global")


def test_sticky_visitor_keeps_the_variant_shown() -> None:
    visits, _ = prepare_visits([raw(visit_doc())], registry(), LIMITS, NOW, RecentIds())
    assert sticky_keys(visits) == [("exp", "v1")]
    decision = decide(visits[0], WeightsReplica(), StickyAssignment("c", "x"), NOW)
    assert (decision["variant_id"], decision["source"], decision["propensity"]) == (
        "c",
        "sticky",
        1.0,
    )


def test_holdout_visitors_get_uniform() -> None:
    reg, weights = registry(holdout_share=0.5), WeightsReplica()
    weights.apply(_allocation("device:mobile|source:instagram", {"a": 0.0, "b": 1.0, "c": 0.0}))
    events = [raw(visit_doc(f"e{i}", f"v{i}"), offset=i) for i in range(2000)]
    visits, _ = prepare_visits(events, reg, LIMITS, NOW, RecentIds())
    decisions = decide_all(visits, weights, {}, NOW)
    held = [d for d in decisions if d["source"] == "holdout"]
    # binomial(2000, 0.5): 4.5 standard errors = 4.5 * sqrt(2000 * .25) ≈ 101
    assert abs(len(held) - 1000) < 101
    assert all(d["propensity"] == pytest.approx(1 / 3) for d in held)


def test_refusals_carry_reasons() -> None:
    reg = registry()
    for status in ("paused", "stopped"):
        doc = new_experiment_document(status, ["a", "b"], now=NOW)
        reg.apply(status, {**doc, "status": status})
    events = [
        raw(visit_doc("e1"), offset=1),
        raw(visit_doc("e1", visitor="other"), offset=2),  # the same event id again
        raw(visit_doc("e2", experiment="nope"), offset=3),
        raw(visit_doc("e3", experiment="stopped"), offset=4),
        RawEvent("visits", 0, 5, None, b"\x00garbage"),
        raw(visit_doc("e4", experiment="paused"), offset=6),  # paused: decided, not refused
    ]
    visits, rejects = prepare_visits(events, reg, LIMITS, NOW, RecentIds())
    assert [v.event_id for v in visits] == ["e1", "e4"]
    assert [str(r.rejected.reason) for r in rejects] == [
        "duplicate_event",
        "unknown_experiment",
        "experiment_not_running",
        "malformed_json",
    ]
    for r in rejects:
        assert validate("deadletter", r.dead_letter(NOW)) is None


def test_the_same_record_read_twice_is_a_replay_not_a_duplicate() -> None:
    recent = RecentIds()
    event = raw(visit_doc("e1"), offset=9)
    first, _ = prepare_visits([event], registry(), LIMITS, NOW, recent)
    again, rejects = prepare_visits([event], registry(), LIMITS, NOW, recent)
    assert len(first) == len(again) == 1 and rejects == []


def _allocation(segment: str, weights: dict[str, float], source: str = "pooled") -> dict:
    return {
        "experiment_id": "exp",
        "segment_key": segment,
        "weights": weights,
        "source": source,
        "version": 7,
        "exposures": dict.fromkeys(weights, 0),
        "conversions": dict.fromkeys(weights, 0),
        "updated_at": format_timestamp(NOW),
    }


def test_prepare_visit_is_prepare_visits_one_at_a_time() -> None:
    events = [
        raw(visit_doc("e1", "v1")),
        raw(visit_doc("e2", "v2", experiment="nope"), offset=1),
        raw(visit_doc("e1", "v3"), offset=2),  # a duplicate event_id
        RawEvent("visits", 0, 3, None, b"\x00garbage"),
        raw({**visit_doc("e4", "v4"), "occurred_at": "2026-05-01T13:59:00.25+02:00"}, offset=4),
    ]
    visits, rejects = prepare_visits(events, registry(), LIMITS, NOW, RecentIds())
    recent, reg = RecentIds(), registry()
    one_by_one = [prepare_visit(e, reg, LIMITS, NOW, recent) for e in events]
    assert [p for p in one_by_one if not isinstance(p, Reject)] == visits
    assert [p for p in one_by_one if isinstance(p, Reject)] == rejects
    assert [r.rejected.reason for r in rejects] == [
        "unknown_experiment", "duplicate_event", "malformed_json",
    ]  # fmt: skip
    assert visits[1].occurred_at == datetime(2026, 5, 1, 11, 59, 0, 250_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("experiment", "event"), [("exp", "e1"), ("checkout-é", "5f0c-6a4e"), ("", "")]
)
def test_decision_id_is_the_blake2b_of_experiment_and_event(experiment: str, event: str) -> None:
    # the id consumers dedupe by: it must not change with how the hash is computed
    expected = hashlib.blake2b(f"{experiment}\x1f{event}".encode(), digest_size=16).hexdigest()
    assert decision_id(experiment, event) == decision_id(experiment, event) == expected
