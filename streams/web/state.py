"""The JSON the dashboard polls: the published documents, selected and ordered, no numbers
of its own.

`dashboard_state` is pure: the experiments this worker knows (its replica of the
`experiments` topic), which of them have a report and how many anomalies it has, and for the
one the page shows the documents of its latest publication and the `decisions` / `share`
fields of its earlier lift reports (`streams.sink.dashboard`) in, one JSON-ready dict out.
Every number in it was published by the experiment's owner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from streams.experiments import Experiment
from streams.sink.dashboard import HistoryPoint

CHARTED_SEGMENTS = 12  # segments with an allocation-over-time chart (the largest ones)
_STATUS_ORDER = {"running": 0, "paused": 1, "stopped": 2}


def _timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ordered(experiments: Sequence[Experiment]) -> list[Experiment]:
    """Running experiments first, then paused, then stopped; by id within each."""
    return sorted(experiments, key=lambda e: (_STATUS_ORDER.get(e.status, 3), e.experiment_id))


def selected(experiments: Sequence[Experiment], wanted: str | None) -> str | None:
    """The experiment the page shows: the one asked for if known, else the first."""
    ids = [e.experiment_id for e in ordered(experiments)]
    return wanted if wanted in ids else (ids[0] if ids else None)


def charted_segments(lift_report: Mapping[str, Any] | None) -> list[str]:
    """'*' and the largest segments of the report (by the decisions it published)."""
    if lift_report is None:
        return ["*"]
    segments = lift_report["report"].get("segments", [])
    largest = sorted(segments, key=lambda s: (-s["decisions"], s["segment_key"]))
    return ["*", *(s["segment_key"] for s in largest[:CHARTED_SEGMENTS])]


def summary_state(experiment: Experiment, has_report: bool, anomaly_count: int) -> dict[str, Any]:
    """One experiment as its tab shows it."""
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "status": experiment.status,
        "has_report": has_report,
        "anomaly_count": anomaly_count,
        "detail": False,
    }


def experiment_state(
    experiment: Experiment,
    documents: Sequence[Mapping[str, Any]],
    history: Sequence[HistoryPoint],
) -> dict[str, Any]:
    """One experiment in full: its definition, its latest publication, its charted history."""
    lift = next((d for d in documents if d.get("kind") == "lift_report"), None)
    recommendation = next((d for d in documents if d.get("kind") == "recommendation"), None)
    anomalies = [d for d in documents if d.get("kind") == "anomaly"]
    charted = charted_segments(lift)
    return {
        **summary_state(experiment, lift is not None, len(anomalies)),
        "detail": True,
        "policy": experiment.policy_name,
        "context_features": list(experiment.context_features),
        "variants": list(experiment.variant_ids),
        "variant_names": {
            v: n for v, n in zip(experiment.variant_ids, experiment.variant_names, strict=True) if n
        },
        "lift_report": lift,
        "anomalies": anomalies,
        "recommendation": recommendation,
        "charted_segments": charted,
        "history": [
            {
                "taken_at": point.taken_at,
                "snapshot_version": point.snapshot_version,
                "segments": {k: point.segments[k] for k in charted if k in point.segments},
            }
            for point in history
        ],
    }


def dashboard_state(
    experiments: Sequence[Experiment],
    shown: str | None,
    documents: Sequence[Mapping[str, Any]],
    history: Sequence[HistoryPoint],
    *,
    reported: Mapping[str, int],
    now: datetime,
    worker_ready: bool,
    insights_interval_s: float,
    refresh_s: float,
) -> dict[str, Any]:
    """The page's data: every experiment for the tabs (running first, then paused, then
    stopped) and the one shown (`shown`: `documents` and `history` are its) in full.
    `reported`: the anomaly count of each experiment that has a published report."""
    return {
        "generated_at": _timestamp(now),
        "worker_ready": worker_ready,
        "insights_interval_s": insights_interval_s,
        "refresh_s": refresh_s,
        "shown": shown,
        "experiments": [
            experiment_state(e, documents, history)
            if e.experiment_id == shown
            else summary_state(e, e.experiment_id in reported, reported.get(e.experiment_id, 0))
            for e in ordered(experiments)
        ],
    }
