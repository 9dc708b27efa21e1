"""The learn step: allocation documents from counts, and when they are worth publishing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.contracts import validate
from streams.experiments import experiment_from_document, new_experiment_document
from streams.pipeline.learn import allocation_document, moved
from streams.pipeline.replica import WeightsReplica

pytestmark = pytest.mark.unit
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def experiment(policy: str = "segment") -> object:
    return experiment_from_document(
        new_experiment_document(
            "exp", ["a", "b", "c"], policy={"name": policy, "min_samples_per_segment": 0}, now=NOW
        )
    )


def test_a_clear_winner_gets_most_weight_and_the_document_is_valid() -> None:
    segment = {"a": (500, 10), "b": (500, 60), "c": (500, 12)}
    doc = allocation_document(experiment(), "device:mobile", segment, segment, NOW)  # type: ignore[arg-type]
    assert validate("allocations", doc) is None
    assert max(doc["weights"], key=doc["weights"].get) == "b"
    assert doc["weights"]["b"] > 0.9
    assert doc["version"] == 1500 + 82
    assert sum(doc["weights"].values()) == pytest.approx(1.0)


def test_global_key_uses_the_experiment_totals() -> None:
    totals = {"a": (900, 90), "b": (900, 20), "c": (900, 20)}
    doc = allocation_document(experiment(), "*", {}, totals, NOW)  # type: ignore[arg-type]
    assert doc["source"] == "global" and max(doc["weights"], key=doc["weights"].get) == "a"


def test_no_data_means_equal_weights() -> None:
    doc = allocation_document(experiment("pooled"), "s", {}, {}, NOW)  # type: ignore[arg-type]
    assert max(doc["weights"].values()) - min(doc["weights"].values()) < 1e-9


def test_moved_threshold() -> None:
    assert moved(None, {"a": 0.5, "b": 0.5}, 0.01)
    assert not moved({"a": 0.5, "b": 0.5}, {"a": 0.505, "b": 0.495}, 0.01)
    assert moved({"a": 0.5, "b": 0.5}, {"a": 0.52, "b": 0.48}, 0.01)


def test_replica_keeps_the_newest_version() -> None:
    replica = WeightsReplica()
    newer = {
        "experiment_id": "e",
        "segment_key": "s",
        "weights": {"a": 0.9, "b": 0.1},
        "source": "segment",
        "version": 5,
    }
    older = {**newer, "weights": {"a": 0.1, "b": 0.9}, "version": 3}
    assert replica.apply(newer) and not replica.apply(older)
    found = replica.lookup("e", "s")
    assert found is not None and found[0].probabilities == (0.9, 0.1) and found[1]
    assert replica.lookup("e", "other") is None


def test_pooled_segments_use_the_pooling_estimate_over_every_segment() -> None:
    """Segments that all agree make the estimate pool hard: a small segment's lucky streak
    moves its weights less than under the fixed fallback strength."""
    from streams.pipeline.learn import pooling_estimate

    pooled = experiment("pooled")
    agreeing = {f"s{i}": {"a": (2000, 100), "b": (2000, 60), "c": (2000, 60)} for i in range(8)}
    small = {"a": (40, 1), "b": (40, 5), "c": (40, 2)}
    totals = {"a": (16040, 801), "b": (16040, 485), "c": (16040, 482)}
    estimate = pooling_estimate(pooled, {**agreeing, "small": small})  # type: ignore[arg-type]
    assert estimate is not None
    with_estimate = allocation_document(pooled, "small", small, totals, NOW, estimate)  # type: ignore[arg-type]
    fallback = allocation_document(pooled, "small", small, totals, NOW)  # type: ignore[arg-type]
    assert with_estimate["weights"]["a"] > fallback["weights"]["a"]
    assert pooling_estimate(experiment("segment"), agreeing) is None  # type: ignore[arg-type]
