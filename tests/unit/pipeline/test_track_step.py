"""The track step without Kafka or Postgres: validation, the decision join, attribution, deltas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.contracts import RejectReason, format_timestamp
from streams.experiments import ExperimentRegistry, new_experiment_document
from streams.pipeline.events import Limits, RawEvent
from streams.pipeline.track import (
    DecisionRecord,
    ExposureRecord,
    Topics,
    Waits,
    attribute,
    classify,
    dedupe_conversions,
    deltas,
    join_decisions,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_event_bytes=65_536, max_future_skew=timedelta(minutes=5))
TOPICS = Topics("decisions", "exposures", "conversions")
WAITS = Waits(grace=timedelta(minutes=10), unknown_experiment=timedelta(minutes=5))
SEGMENT = "device:mobile"
HOUR = timedelta(hours=1)


def registry(status: str = "running") -> ExperimentRegistry:
    reg = ExperimentRegistry()
    doc = new_experiment_document(
        "exp", ["a", "b"], context_features=["device"], attribution_window_seconds=3600, now=NOW
    )
    reg.apply("exp", {**doc, "status": status})
    return reg


def _raw(topic: str, doc: dict[str, Any], offset: int = 0) -> RawEvent:
    return RawEvent(topic, 0, offset, b"v1", orjson.dumps(doc))


def exposure(decision: str = "d1", **changes: Any) -> RawEvent:
    doc = {
        "event_id": f"x-{decision}",
        "experiment_id": "exp",
        "visitor_id": "v1",
        "variant_id": "a",
        "decision_id": decision,
        "segment_key": SEGMENT,
        "occurred_at": format_timestamp(NOW - timedelta(minutes=30)),
        **changes,
    }
    return _raw("exposures", doc)


def conversion(event_id: str, minutes_ago: float, **changes: Any) -> RawEvent:
    doc = {
        "event_id": event_id,
        "experiment_id": "exp",
        "visitor_id": "v1",
        "occurred_at": format_timestamp(NOW - timedelta(minutes=minutes_ago)),
        **changes,
    }
    return _raw("conversions", doc)


def decision(decision_id: str = "d1", variant: str = "a", **changes: Any) -> DecisionRecord:
    fields: dict[str, Any] = {
        "decision_id": decision_id,
        "experiment_id": "exp",
        "visitor_id": "v1",
        "variant_id": variant,
        "segment_key": SEGMENT,
        "propensity": 0.25,
        "weights_version": 3,
        "source": "pooled",
        "decided_at": NOW - timedelta(minutes=31),
        **changes,
    }
    return DecisionRecord(**fields)


def test_decisions_are_read_with_their_propensity_and_version() -> None:
    d = decision()
    doc = {**d.__dict__, "event_id": "visit-1", "decided_at": format_timestamp(d.decided_at)}
    out = classify([_raw("decisions", doc)], TOPICS, registry(), LIMITS, WAITS, NOW)
    assert out.decisions == [d] and not out.rejects


def test_events_of_an_unknown_experiment_wait_for_it_then_are_refused() -> None:
    events = [exposure(experiment_id="later"), conversion("c1", 5, experiment_id="later")]
    waiting = classify(events, TOPICS, registry(), LIMITS, WAITS, NOW)
    assert [w.waiting_for for w in waiting.waiting] == ["experiment", "experiment"]
    assert not waiting.rejects and not waiting.exposures and not waiting.conversions
    assert waiting.waiting[0].expires_at == NOW + WAITS.unknown_experiment
    expired = classify(events, TOPICS, registry(), LIMITS, WAITS, NOW, expired=True)
    assert [r.rejected.reason for r in expired.rejects] == [RejectReason.UNKNOWN_EXPERIMENT] * 2


def test_a_paused_experiment_keeps_its_events_and_a_stopped_one_refuses_them() -> None:
    events = [exposure(), conversion("c1", 5)]
    paused = classify(events, TOPICS, registry("paused"), LIMITS, WAITS, NOW)
    assert len(paused.exposures) == 1 and len(paused.conversions) == 1 and not paused.rejects
    stopped = classify(events, TOPICS, registry("stopped"), LIMITS, WAITS, NOW)
    assert [r.rejected.reason for r in stopped.rejects] == [RejectReason.EXPERIMENT_NOT_RUNNING] * 2


@pytest.mark.parametrize("key", ["*", "device:mobile|device:mobile", "nonsense"])
def test_an_exposure_whose_segment_key_is_not_a_segment_is_refused(key: str) -> None:
    out = classify([exposure(segment_key=key)], TOPICS, registry(), LIMITS, WAITS, NOW)
    assert [r.rejected.reason for r in out.rejects] == [RejectReason.INVALID_SEGMENT_KEY]


def test_a_conversion_value_too_large_to_sum_is_refused() -> None:
    out = classify([conversion("c1", 5, value=1.5e308)], TOPICS, registry(), LIMITS, WAITS, NOW)
    assert [r.rejected.reason for r in out.rejects] == [RejectReason.SCHEMA_VIOLATION]


def _exposures(*events: RawEvent) -> list[Any]:
    return classify(list(events), TOPICS, registry(), LIMITS, WAITS, NOW).exposures


def test_an_exposure_takes_its_decision_and_waits_without_one() -> None:
    e1, e2 = _exposures(exposure("d1"), exposure("d2"))
    matched, waiting, rejects = join_decisions([e1, e2], {"d1": decision("d1")}, WAITS.grace)
    assert matched == [(e1, decision("d1"))] and not rejects
    assert [(w.waiting_for, w.decision_id) for w in waiting] == [("decision", "d2")]
    assert waiting[0].expires_at == e2.occurred_at + HOUR + WAITS.grace
    _, again, refused = join_decisions([e2], {}, WAITS.grace, expired=True)
    assert len(again) == 1 and [r.rejected.reason for r in refused] == [
        RejectReason.UNKNOWN_DECISION
    ]


def test_an_exposure_that_contradicts_its_decision_is_refused() -> None:
    (e,) = _exposures(exposure("d1", variant_id="b"))
    matched, waiting, rejects = join_decisions([e], {"d1": decision("d1", "a")}, WAITS.grace)
    assert not matched and not waiting
    assert [r.rejected.reason for r in rejects] == [RejectReason.CONTRADICTS_DECISION]
    assert "variant_id 'b' (the decision says 'a')" in rejects[0].rejected.detail


def _record(decision_id: str, minutes_ago: float, converted: str | None = None) -> ExposureRecord:
    return ExposureRecord(
        decision_id,
        "exp",
        "a",
        SEGMENT,
        NOW - timedelta(minutes=minutes_ago),
        0.5,
        "pooled",
        converted,
    )


def _conversions(*events: RawEvent, expired: bool = False) -> list[Any]:
    return classify(
        list(events), TOPICS, registry(), LIMITS, WAITS, NOW, expired=expired
    ).conversions


def test_a_second_conversion_of_an_exposure_is_a_repeat_not_a_refusal() -> None:
    c1, c2 = _conversions(conversion("c1", 20, value=5.0), conversion("c2", 10, value=7.0))
    candidates = {("exp", "v1"): [_record("d1", 30)]}
    done, waiting, rejects = attribute([c1, c2], candidates, {}, WAITS.grace)
    assert [(a.conversion.event_id, a.repeat) for a in done] == [("c1", False), ("c2", True)]
    assert not waiting and not rejects


def test_a_conversion_after_a_decision_not_yet_exposed_waits_for_that_exposure() -> None:
    # the visitor was exposed (d1, converted) 30 min ago, then decided again 12 min ago (d2):
    # a conversion 10 min ago belongs to d2's exposure, still on its way, not to d1
    (c,) = _conversions(conversion("c2", 10))
    candidates = {("exp", "v1"): [_record("d1", 30, converted="c1")]}
    unexposed = {("exp", "v1"): [NOW - timedelta(minutes=12)]}
    done, waiting, rejects = attribute([c], candidates, unexposed, WAITS.grace)
    assert not done and not rejects and [w.waiting_for for w in waiting] == ["exposure"]
    # a decision made after the conversion does not hold it back
    later = {("exp", "v1"): [NOW - timedelta(minutes=5)]}
    done, waiting, _ = attribute([c], candidates, later, WAITS.grace)
    assert [a.repeat for a in done] == [True] and not waiting


def test_a_conversion_without_exposure_waits_and_when_expired_is_refused() -> None:
    (c,) = _conversions(conversion("c1", 10))
    done, waiting, rejects = attribute([c], {}, {}, WAITS.grace)
    assert not done and not rejects and waiting[0].expires_at == c.occurred_at + HOUR + WAITS.grace
    (late,) = _conversions(conversion("c1", 10), expired=True)
    done, waiting, rejects = attribute([late], {}, {}, WAITS.grace)
    assert not done and len(waiting) == 1
    assert [r.rejected.reason for r in rejects] == [RejectReason.UNATTRIBUTABLE]
    # an expired conversion that has an exposure goes to it, whatever decision is pending
    done, _, _ = attribute(
        [late], {("exp", "v1"): [_record("d1", 30)]}, {("exp", "v1"): [NOW - HOUR / 6]}, WAITS.grace
    )
    assert [a.exposure.decision_id for a in done] == ["d1"]


def test_a_conversion_counted_before_or_twice_in_a_batch_is_a_duplicate() -> None:
    c1, c2, c3 = _conversions(conversion("c1", 3), conversion("c2", 2), conversion("c2", 1))
    kept, rejects = dedupe_conversions([c1, c2, c3], counted={"c1"})
    assert [c.event_id for c in kept] == ["c2"]
    assert [r.rejected.reason for r in rejects] == [RejectReason.DUPLICATE_EVENT] * 2


def test_deltas_carry_raw_counts_and_inverse_propensity_sums() -> None:
    e1, e2 = _exposures(exposure("d1"), exposure("d2", variant_id="b"))
    d1 = decision("d1", "a", propensity=0.25)
    d2 = decision("d2", "b", propensity=1.0, source="sticky")
    (c1, c2) = _conversions(conversion("c1", 5, value=3.0), conversion("c2", 4, value=2.0))
    rec = _record("d1", 30)
    rec_p = ExposureRecord("d1", "exp", "a", SEGMENT, rec.exposed_at, 0.25, "pooled", None)
    done, _, _ = attribute([c1, c2], {("exp", "v1"): [rec_p]}, {}, WAITS.grace)
    out = deltas([(e1, d1), (e2, d2)], done)
    a, b = out[("exp", SEGMENT)]["a"], out[("exp", SEGMENT)]["b"]
    assert (a["exposures"], a["conversions"], a["repeat_conversions"]) == (1, 1, 1)
    assert a["conversion_value"] == 5.0
    assert (a["ipw_weight"], a["ipw_weight_sq"]) == (4.0, 16.0)
    assert (a["ipw_conversions"], a["ipw_conversions_sq"]) == (4.0, 16.0)
    # a sticky decision repeats an earlier draw: it is counted, but not in the IPW sums
    assert b["exposures"] == 1 and b["ipw_weight"] == 0.0
