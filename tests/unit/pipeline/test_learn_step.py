"""The learn step without Kafka or Postgres: the owner's fold and snapshot → allocations."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams.core.snapshot import ExperimentSnapshot, SegmentSnapshot, VariantStats
from streams.experiments import experiment_from_document, new_experiment_document
from streams.pipeline.learn import (
    Delta,
    OwnedRow,
    allocations,
    as_of,
    fold,
    to_publish,
)
from streams.pipeline.replica import GLOBAL_SEGMENT, WeightsReplica

pytestmark = pytest.mark.unit
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def experiment(policy: dict[str, Any] | None = None) -> Any:
    doc = new_experiment_document(
        "exp", ["a", "b"], context_features=["device"], policy=policy, now=NOW
    )
    return experiment_from_document(doc)


def delta(delta_id: int, segment: str, **variants: dict[str, float]) -> Delta:
    return Delta(delta_id, "exp", segment, variants)


def test_fold_adds_raw_counts_and_decays_effective_ones_by_the_minute() -> None:
    start = OwnedRow(
        VariantStats(
            exposures=100, conversions=10, effective_exposures=100.0, effective_conversions=10.0
        ),
        NOW - timedelta(minutes=2),
        NOW - timedelta(hours=1),
        NOW - timedelta(minutes=2),
    )
    key = ("exp", "device:mobile", "a")
    rows = fold(
        {key: start},
        [delta(1, "device:mobile", a={"exposures": 4, "conversions": 1})],
        {"exp": 0.5},
        NOW,
    )
    row = rows[key]
    assert (row.stats.exposures, row.stats.conversions) == (104, 11)
    # two minutes at a discount of 0.5 per minute keep a quarter of the old evidence
    assert row.stats.effective_exposures == pytest.approx(100 * 0.25 + 4)
    assert row.stats.effective_conversions == pytest.approx(10 * 0.25 + 1)
    assert row.first_seen == start.first_seen and row.decayed_at == NOW == row.last_seen
    # without discount nothing is forgotten
    same = fold({key: start}, [delta(1, "device:mobile", a={"exposures": 4})], {}, NOW)[key]
    assert same.stats.effective_exposures == 104.0


def test_fold_of_two_deltas_of_one_row_adds_both() -> None:
    deltas = [delta(1, "s", a={"exposures": 2}), delta(2, "s", a={"exposures": 3, "ipw_weight": 6})]
    rows = fold({}, deltas, {}, NOW)
    assert rows[("exp", "s", "a")].stats.exposures == 5
    assert rows[("exp", "s", "a")].stats.ipw_weight == 6


def _stats(n: float, c: float) -> VariantStats:
    return VariantStats(
        exposures=int(n), conversions=int(c), effective_exposures=n, effective_conversions=c
    )


def snapshot(**segments: tuple[tuple[float, float], tuple[float, float]]) -> ExperimentSnapshot:
    return ExperimentSnapshot(
        "exp",
        ("a", "b"),
        NOW,
        {
            key.replace("_", ":"): SegmentSnapshot(
                key.replace("_", ":"), {"a": _stats(*a), "b": _stats(*b)}, NOW, NOW
            )
            for key, (a, b) in segments.items()
        },
    )


def test_one_snapshot_gives_every_segment_and_star_one_version() -> None:
    snap = snapshot(device_mobile=((400, 40), (400, 8)), device_desktop=((100, 2), (100, 10)))
    docs = allocations(experiment({"name": "segment", "min_samples_per_segment": 10}), snap, 7)
    assert set(docs) == {"device:mobile", "device:desktop", GLOBAL_SEGMENT}
    assert {d["version"] for d in docs.values()} == {7}
    assert docs["device:mobile"]["weights"]["a"] > 0.9
    assert docs["device:desktop"]["weights"]["b"] > 0.9
    # `*` is the traffic-weighted mixture of the segments' allocations (800 : 200)
    star = docs[GLOBAL_SEGMENT]["weights"]["a"]
    mixture = (
        0.8 * docs["device:mobile"]["weights"]["a"] + 0.2 * docs["device:desktop"]["weights"]["a"]
    )
    assert star == pytest.approx(mixture)
    assert docs[GLOBAL_SEGMENT]["exposures"] == {"a": 500, "b": 500}


def test_a_uniform_experiment_is_uniform_everywhere_including_star() -> None:
    snap = snapshot(device_mobile=((400, 40), (400, 8)))
    docs = allocations(experiment({"name": "uniform"}), snap, 1)
    for doc in docs.values():
        assert doc["weights"] == {"a": 0.5, "b": 0.5}
    assert allocations(experiment({"name": "uniform"}), snapshot(), 1)[GLOBAL_SEGMENT][
        "weights"
    ] == {"a": 0.5, "b": 0.5}


def test_weights_that_move_while_counts_do_not_reach_every_replica() -> None:
    # the pooled policy: another segment's evidence moves this segment's weights; each
    # publication carries a higher version, so a replica takes it
    exp = experiment({"name": "pooled"})
    quiet = ((50, 2), (50, 3))
    first = allocations(exp, snapshot(device_mobile=quiet, device_desktop=((60, 3), (60, 3))), 1)
    second = allocations(
        exp, snapshot(device_mobile=quiet, device_desktop=((3000, 60), (3000, 240))), 2
    )
    before = first["device:mobile"]["weights"]["b"]
    after = second["device:mobile"]["weights"]["b"]
    assert abs(after - before) > 0.01
    replica = WeightsReplica()
    assert replica.apply(first["device:mobile"]) and replica.apply(second["device:mobile"])
    entry, own = replica.lookup("exp", "device:mobile")
    assert own and entry.version == 2 and math.isclose(entry.probabilities[1], after)
    assert not replica.apply(first["device:mobile"])  # an older snapshot never wins


def test_to_publish_sends_what_moved_and_everything_on_a_heartbeat() -> None:
    docs = {"s1": {"weights": {"a": 0.5, "b": 0.5}}, "s2": {"weights": {"a": 0.7, "b": 0.3}}}
    published = {"s1": {"a": 0.501, "b": 0.499}, "s2": {"a": 0.6, "b": 0.4}}
    assert to_publish(docs, published, 0.005, heartbeat=False) == ["s2"]
    assert to_publish(docs, published, 0.005, heartbeat=True) == ["s1", "s2"]
    assert to_publish(docs, {}, 0.005, heartbeat=False) == ["s1", "s2"]


def test_a_row_is_read_decayed_from_its_own_last_update() -> None:
    row = OwnedRow(_stats(100, 10), NOW - timedelta(minutes=1), NOW, NOW)
    stats = as_of(row, NOW, 0.5)
    assert (stats.effective_exposures, stats.effective_conversions) == (50.0, 5.0)
    assert stats.exposures == 100  # raw counts are never discounted
    assert as_of(row, NOW, 1.0) is row.stats


def _doc(version: int, a: float) -> dict[str, Any]:
    return {
        "experiment_id": "exp",
        "segment_key": "s",
        "weights": {"a": a, "b": 1 - a},
        "source": "pooled",
        "version": version,
    }


def test_a_visit_meets_the_weights_current_when_it_reached_kafka() -> None:
    replica = WeightsReplica()
    replica.apply(_doc(1, 0.9), published_ms=1_000)
    before = replica.lookup("exp", "s", at_ms=1_500)
    replica.apply(_doc(2, 0.1), published_ms=2_000)  # arrives after the visit was decided
    again = replica.lookup("exp", "s", at_ms=1_500)  # the visit replayed
    assert before is not None and again is not None
    assert before[0].version == again[0].version == 1, "a replay meets the same weights"
    newest = replica.lookup("exp", "s")
    assert newest is not None and newest[0].version == 2
    later = replica.lookup("exp", "s", at_ms=2_500)
    assert later is not None and later[0].version == 2
    early = replica.lookup("exp", "s", at_ms=10)  # a producer clock far behind
    assert early is not None and early[0].version == 1, "the oldest kept, never nothing"


def test_the_replica_keeps_ten_minutes_of_versions_and_the_one_current_before() -> None:
    from streams.pipeline.replica import HISTORY_MS

    replica = WeightsReplica()
    for version in range(1, 6):
        replica.apply(_doc(version, 0.5), published_ms=version * HISTORY_MS // 2)
    # published at 0.5, 1, 1.5, 2, 2.5 × HISTORY_MS: 1.5 was current when the window began
    kept = [replica.lookup("exp", "s", at_ms=t)[0].version for t in (0, HISTORY_MS * 3 // 2)]
    assert kept == [3, 3]
    assert not replica.apply(_doc(4, 0.5), published_ms=0), "a version is kept once"
