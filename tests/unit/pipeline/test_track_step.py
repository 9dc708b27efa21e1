"""The track step without Kafka or Postgres: validation, dedupe and attribution rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.contracts import format_timestamp
from streams.experiments import ExperimentRegistry, new_experiment_document
from streams.pipeline.events import Limits, RawEvent
from streams.pipeline.track import (
    ExposureRecord,
    attribute,
    dedupe_exposures,
    prepare_track,
)

pytestmark = pytest.mark.unit
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_event_bytes=65_536, max_future_skew=timedelta(minutes=5))


def registry() -> ExperimentRegistry:
    reg = ExperimentRegistry()
    reg.apply(
        "exp", new_experiment_document("exp", ["a", "b"], attribution_window_seconds=3600, now=NOW)
    )
    return reg


def exposure(decision: str, variant: str = "a", visitor: str = "v1", offset: int = 0) -> RawEvent:
    doc = {
        "event_id": f"x-{decision}-{offset}",
        "experiment_id": "exp",
        "visitor_id": visitor,
        "variant_id": variant,
        "decision_id": decision,
        "segment_key": "all",
        "occurred_at": format_timestamp(NOW - timedelta(minutes=30)),
    }
    return RawEvent("exposures", 0, offset, visitor.encode(), orjson.dumps(doc))


def conversion(event_id: str, minutes_ago: float, visitor: str = "v1", offset: int = 0) -> RawEvent:
    doc = {
        "event_id": event_id,
        "experiment_id": "exp",
        "visitor_id": visitor,
        "occurred_at": format_timestamp(NOW - timedelta(minutes=minutes_ago)),
    }
    return RawEvent("conversions", 0, offset, visitor.encode(), orjson.dumps(doc))


def test_exposure_of_an_unknown_variant_is_refused() -> None:
    exposures, conversions, rejects = prepare_track(
        [exposure("d1", variant="zzz"), exposure("d2")], "exposures", registry(), LIMITS, NOW
    )
    assert [e.decision_id for e in exposures] == ["d2"] and conversions == []
    assert [str(r.rejected.reason) for r in rejects] == ["unknown_variant"]
    assert "'zzz'" in rejects[0].rejected.detail


def test_a_decision_is_exposed_once_per_batch() -> None:
    exposures, _, _ = prepare_track(
        [exposure("d1", offset=1), exposure("d1", offset=2)], "exposures", registry(), LIMITS, NOW
    )
    kept, duplicates = dedupe_exposures(exposures)
    assert len(kept) == 1 and [str(r.rejected.reason) for r in duplicates] == ["duplicate_event"]


def _candidates() -> dict[tuple[str, str], list[ExposureRecord]]:
    return {("exp", "v1"): [ExposureRecord("d1", "b", "all", NOW - timedelta(minutes=30), None)]}


def test_conversion_inside_the_window_is_attributed_once() -> None:
    _, conversions, _ = prepare_track(
        [
            conversion("c1", 10, offset=1),
            conversion("c2", 5, offset=2),
            conversion("c1", 10, offset=3),
        ],
        "exposures",
        registry(),
        LIMITS,
        NOW,
    )
    attributed, rejects, waiting = attribute(conversions, _candidates())
    assert [(a.conversion.event_id, a.exposure.variant_id) for a in attributed] == [("c1", "b")]
    assert [str(r.rejected.reason) for r in rejects] == ["unattributable", "duplicate_event"]
    assert waiting == []


def test_conversion_without_exposure_in_window_waits() -> None:
    _, conversions, _ = prepare_track(
        [conversion("early", 45), conversion("other", 1, visitor="v2")],
        "exposures",
        registry(),
        LIMITS,
        NOW,
    )
    attributed, rejects, waiting = attribute(conversions, _candidates())
    assert attributed == [] and rejects == []
    assert [c.event_id for c in waiting] == ["early", "other"]


def test_conversion_after_the_window_waits_for_a_newer_exposure() -> None:
    old = {("exp", "v1"): [ExposureRecord("d0", "a", "all", NOW - timedelta(hours=3), None)]}
    _, conversions, _ = prepare_track([conversion("late", 1)], "exposures", registry(), LIMITS, NOW)
    attributed, _, waiting = attribute(conversions, old)
    assert attributed == [] and [c.event_id for c in waiting] == ["late"]
