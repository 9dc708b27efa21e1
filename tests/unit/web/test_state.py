"""The dashboard's JSON: the published documents, selected and ordered, nothing computed."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streams.contracts import load_schema
from streams.experiments import experiment_from_document, new_experiment_document
from streams.sink.dashboard import HistoryPoint
from streams.web.state import CHARTED_SEGMENTS, charted_segments, dashboard_state, selected

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 3, 0, 5, tzinfo=UTC)
EXAMPLES: list[dict[str, Any]] = load_schema("insights")["examples"]


def experiment(eid: str, status: str = "running") -> Any:
    doc = new_experiment_document(eid, ["headline-a", "headline-b"], context_features=["device"])
    return experiment_from_document({**doc, "status": status})


def publication(eid: str) -> list[dict[str, Any]]:
    return [{**copy.deepcopy(d), "experiment_id": eid} for d in EXAMPLES]


def test_documents_are_passed_through_as_published() -> None:
    docs = publication("landing-2026")
    history = [HistoryPoint("2026-11-29T02:59:50.000Z", 9120, {"*": {"decisions": 8000}})]
    state = dashboard_state(
        [experiment("landing-2026")],
        "landing-2026",
        docs,
        history,
        reported={"landing-2026": 1},
        now=NOW,
        worker_ready=True,
        insights_interval_s=10.0,
        refresh_s=5.0,
    )
    assert state["generated_at"] == "2026-11-29T03:00:05.000Z"
    [exp] = state["experiments"]
    assert state["shown"] == "landing-2026" and exp["detail"] is True
    assert exp["lift_report"] == docs[0]
    assert exp["anomalies"] == [docs[1]]
    assert exp["recommendation"] == docs[2]
    assert exp["variants"] == ["headline-a", "headline-b"]
    assert exp["history"] == [
        {
            "taken_at": "2026-11-29T02:59:50.000Z",
            "snapshot_version": 9120,
            "segments": {"*": {"decisions": 8000}},
        }
    ]
    orjson.dumps(state)  # JSON-ready as it is


def test_running_experiments_come_first_and_only_the_shown_one_is_in_full() -> None:
    experiments = [experiment("z-stopped", "stopped"), experiment("b"), experiment("a", "paused")]
    assert selected(experiments, None) == "b"
    assert selected(experiments, "a") == "a"
    assert selected(experiments, "unknown") == "b"
    assert selected([], "a") is None
    state = dashboard_state(
        experiments,
        "a",
        [],
        [],
        reported={"z-stopped": 2},
        now=NOW,
        worker_ready=False,
        insights_interval_s=10.0,
        refresh_s=5.0,
    )
    b, a, z = state["experiments"]
    assert [e["experiment_id"] for e in (b, a, z)] == ["b", "a", "z-stopped"]
    assert a["detail"] and a["lift_report"] is None and a["history"] == []  # no report yet
    assert not b["detail"] and "lift_report" not in b and b["has_report"] is False
    assert (z["has_report"], z["anomaly_count"]) == (True, 2)
    assert state["worker_ready"] is False


def test_charts_keep_the_experiment_and_the_largest_segments_only() -> None:
    lift = copy.deepcopy(EXAMPLES[0])
    template = lift["report"]["segments"][0]
    lift["report"]["segments"] = [
        {**template, "segment_key": f"device:d{i:02d}", "decisions": i} for i in range(30)
    ]
    charted = charted_segments(lift)
    assert charted[0] == "*"
    assert len(charted) == CHARTED_SEGMENTS + 1
    assert charted[1:3] == ["device:d29", "device:d28"]
    point = HistoryPoint("t", 1, {k: {"decisions": 1} for k in ["*", "device:d29", "device:d00"]})
    state = dashboard_state(
        [experiment("e")],
        "e",
        [{**lift, "experiment_id": "e"}],
        [point],
        reported={"e": 0},
        now=NOW,
        worker_ready=True,
        insights_interval_s=10.0,
        refresh_s=5.0,
    )
    assert set(state["experiments"][0]["history"][0]["segments"]) == {"*", "device:d29"}
    assert charted_segments(None) == ["*"]
