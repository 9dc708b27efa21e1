"""The in-process decider against the decide stage's own steps, on the same replicas."""

from __future__ import annotations

import gc
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from streams.client import Decision, InvalidVisit, LocalDecider, StickyCache
from streams.contracts import RejectReason, format_timestamp, validate
from streams.errors import InvalidInput
from streams.experiments import ExperimentRegistry, new_experiment_document
from streams.pipeline.decide import StickyAssignment, decide_all, prepare_visits
from streams.pipeline.events import Limits, RawEvent, RecentIds
from streams.pipeline.replica import WeightsReplica

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_event_bytes=65_536, max_future_skew=timedelta(seconds=300))
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 Instagram 330.0.0.18.84"
)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


def _replicas() -> tuple[ExperimentRegistry, WeightsReplica]:
    registry = ExperimentRegistry()
    registry.apply(
        "exp",
        new_experiment_document(
            "exp", ["a", "b", "c"], context_features=["device", "source"], holdout_share=0.2
        ),
    )
    registry.apply(
        "loose",
        new_experiment_document("loose", ["x", "y"], context_features=["device"], sticky=False),
    )
    stopped = new_experiment_document("stopped", ["a", "b"])
    registry.apply("stopped", {**stopped, "status": "stopped"})
    weights = WeightsReplica()
    for segment, probs, version in (
        ("device:mobile|source:instagram", {"a": 0.1, "b": 0.7, "c": 0.2}, 12),
        ("*", {"a": 0.5, "b": 0.25, "c": 0.25}, 30),
    ):
        weights.apply(
            {
                "experiment_id": "exp",
                "segment_key": segment,
                "weights": probs,
                "source": "pooled",
                "version": version,
            }
        )
    return registry, weights


def _visit(i: int, experiment: str = "exp", **context: Any) -> dict[str, Any]:
    return {
        "event_id": f"event-{i}",
        "experiment_id": experiment,
        "visitor_id": f"visitor-{i}",
        "occurred_at": format_timestamp(NOW - timedelta(seconds=1)),
        "context": context or {"user_agent": IPHONE if i % 2 else CHROME, "utm_source": "google"},
    }


def test_decisions_equal_the_decide_stage_for_the_same_visits() -> None:
    registry, weights = _replicas()
    decider = LocalDecider(registry, weights, LIMITS)
    docs = [_visit(i) for i in range(400)] + [_visit(i, "loose") for i in range(400, 500)]
    docs += [_visit(i, user_agent=IPHONE, utm_source="instagram") for i in range(500, 600)]
    mine = [decider.decide(doc, NOW) for doc in docs]

    events = [RawEvent("visits", 0, i, None, orjson.dumps(d)) for i, d in enumerate(docs)]
    visits, rejects = prepare_visits(events, registry, LIMITS, NOW, RecentIds())
    theirs = decide_all(visits, weights, {}, NOW)

    assert not rejects
    assert [d.as_document() for d in mine] == theirs
    assert {d.source for d in mine} >= {"pooled", "global", "holdout", "uniform"}
    assert all(validate("decisions", d.as_document()) is None for d in mine)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", RejectReason.MALFORMED_JSON),
        (b"\xff\xfe", RejectReason.INVALID_UTF8),
        (b"[1]", RejectReason.NOT_AN_OBJECT),
        (orjson.dumps({"event_id": "x"}), RejectReason.SCHEMA_VIOLATION),
        (orjson.dumps(_visit(1, "nope")), RejectReason.UNKNOWN_EXPERIMENT),
        (orjson.dumps(_visit(1, "stopped")), RejectReason.EXPERIMENT_NOT_RUNNING),
        (orjson.dumps({**_visit(1), "occurred_at": "2999-01-01T00:00:00Z"}),
         RejectReason.FUTURE_TIMESTAMP),
        (b"{" + b" " * 70_000 + b"}", RejectReason.OVERSIZED),
    ],
)  # fmt: skip
def test_refused_visits_raise_with_the_dead_letter_reason(raw: bytes, reason: RejectReason) -> None:
    decider = LocalDecider(*_replicas(), LIMITS)
    with pytest.raises(InvalidVisit) as caught:
        decider.decide(raw, NOW)
    assert caught.value.reason == reason
    assert caught.value.detail and str(reason) in str(caught.value)
    assert isinstance(caught.value, InvalidInput), "the project's 'refuse, never retry' error"


def test_the_same_event_id_twice_is_a_duplicate() -> None:
    decider = LocalDecider(*_replicas(), LIMITS)
    decider.decide(_visit(1), NOW)
    with pytest.raises(InvalidVisit) as caught:
        decider.decide(_visit(1), NOW)
    assert caught.value.reason == RejectReason.DUPLICATE_EVENT


def test_sticky_visitors_keep_the_variant_this_process_decided() -> None:
    decider = LocalDecider(*_replicas(), LIMITS)
    first = decider.decide(_visit(1), NOW)
    again = decider.decide({**_visit(1), "event_id": "event-1-again"}, NOW)
    assert (again.variant_id, again.source, again.propensity) == (first.variant_id, "sticky", 1.0)
    assert again.decision_id != first.decision_id

    loose = [decider.decide({**_visit(7, "loose"), "event_id": f"l-{i}"}, NOW) for i in range(40)]
    assert {d.source for d in loose} == {"uniform"}, "a non-sticky experiment draws every time"
    assert len({d.variant_id for d in loose}) == 2


def test_sticky_cache_is_bounded_and_least_recently_used_goes_first() -> None:
    cache = StickyCache(2)
    cache.put(("e", "1"), StickyAssignment("a", "*"))
    cache.put(("e", "2"), StickyAssignment("b", "*"))
    assert cache.get(("e", "1")) is not None  # 1 is now the most recent
    cache.put(("e", "3"), StickyAssignment("c", "*"))
    assert len(cache) == 2
    assert cache.get(("e", "2")) is None
    assert cache.get(("e", "1")) == StickyAssignment("a", "*")
    with pytest.raises(ValueError, match="at least 1"):
        StickyCache(0)


def test_sticky_entries_leave_the_garbage_collectors_care() -> None:
    # one entry per decision, up to 100,000: tracked ones made every full collection walk them
    cache = StickyCache(10)
    cache.put(("e", "1"), StickyAssignment("a", "device:mobile"))
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in cache._entries.values())
    assert not any(gc.is_tracked(key) for key in cache._entries)
    found = cache.get(("e", "1"))
    assert isinstance(found, StickyAssignment)
    assert found == StickyAssignment("a", "device:mobile")


def test_decision_is_the_decisions_contract_field_for_field() -> None:
    from streams.contracts import load_schema

    assert list(Decision._fields) == list(load_schema("decisions")["required"])


def test_importing_the_client_does_not_import_faust() -> None:
    code = (
        "import sys, streams.client; "
        "bad = sorted(m for m in sys.modules if m == 'faust' or m.startswith('faust.')); "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
