"""Snapshot → insight documents (`schemas/insights.schema.json`), pure and total.

`build_insights` is what the experiment's owner calls on an interval: one consistent
`ExperimentSnapshot` (and a few earlier ones) in, the documents to publish on `insights`
and to store in `insights_history` out: one `lift_report`, one `anomaly` per anomaly found,
one `recommendation`. It does no I/O and never raises on odd data (no exposures, one
variant, an empty snapshot): numbers that cannot be computed are null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from streams.analytics import anomalies, lift, recommend, sequential
from streams.analytics.fixed import wilson_interval
from streams.analytics.ipw import Cells
from streams.core.snapshot import ExperimentSnapshot

METHOD = "ipw-asymptotic-confidence-sequence+e-bh"


def _ts(moment: datetime) -> str:
    text = moment.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _f(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


def _pair(low: Any, high: Any) -> list[float | None]:
    return [_f(low), _f(high)]


def build_insights(
    experiment_id: str,
    variant_ids: Sequence[str],
    snapshot: ExperimentSnapshot,
    history: Sequence[ExperimentSnapshot] = (),
    *,
    now: datetime,
    snapshot_version: int | None = None,
    alpha: float = 0.05,
    dead_letters: int | None = None,
    variant_names: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The insight documents of one experiment at one snapshot.

    `history`: earlier snapshots of the same experiment, oldest first (e.g. the last
    hour's); rate drops and spikes compare the period since the oldest with what came
    before. `snapshot_version`: the allocation version read with the snapshot (default:
    exposures + conversions behind it, the measure `allocations.version` used before).
    `dead_letters`: dead letters of this experiment since the oldest history snapshot.
    """
    alpha = alpha if 0.0 < alpha < 1.0 else 0.05
    names = dict(variant_names or {})
    variants = tuple(dict.fromkeys(variant_ids)) or tuple(snapshot.variant_ids)
    cells = Cells.from_snapshot(snapshot, variants)
    analysis = lift.analyse(cells, alpha)
    if snapshot_version is None:
        snapshot_version = int(cells.exposures.sum() + cells.conversions.sum())
    earlier = history[0] if history else None
    earlier_cells = Cells.from_snapshot(earlier, variants) if earlier is not None else None
    rate = None
    if earlier is not None:
        seconds = (snapshot.taken_at - earlier.taken_at).total_seconds()
        grown = cells.decisions.sum() - earlier_cells.decisions.sum()  # type: ignore[union-attr]
        rate = grown / seconds if seconds > 0 and grown > 0 else None
    head = {
        "experiment_id": experiment_id,
        "generated_at": _ts(now),
        "snapshot_version": max(0, int(snapshot_version)),
        "taken_at": _ts(snapshot.taken_at),
    }
    documents = [{**head, "kind": "lift_report", "report": _lift_report(analysis, names)}]
    for anomaly in _anomalies(cells, earlier_cells, snapshot, earlier, dead_letters):
        documents.append({**head, "kind": "anomaly", "report": anomaly.report()})
    documents.append(
        {
            **head,
            "kind": "recommendation",
            "report": {"items": recommend.recommendations(analysis, names, rate)},
        }
    )
    return documents


def _anomalies(
    cells: Cells,
    earlier_cells: Cells | None,
    snapshot: ExperimentSnapshot,
    earlier: ExperimentSnapshot | None,
    dead_letters: int | None,
) -> list[anomalies.Anomaly]:
    found = anomalies.sample_ratio_mismatch(cells) + anomalies.far_segments(cells)
    if earlier_cells is None or earlier is None:
        return found
    found += anomalies.rate_drops(cells, earlier_cells)
    recent = cells.minus(earlier_cells)
    conversions, exposures = float(recent.conversions.sum()), float(recent.exposures.sum())
    checks = [
        ("unattributed_spike", snapshot.unattributed_conversions
         - earlier.unattributed_conversions, conversions, "unattributed conversions"),
        ("expired_exposures_spike", snapshot.expired_exposures - earlier.expired_exposures,
         exposures, "exposures expired without their decision"),
    ]  # fmt: skip
    if dead_letters is not None:
        checks.append(("dead_letter_spike", dead_letters, exposures, "dead letters"))
    for kind, new, base, what in checks:
        spike = anomalies.spike(kind, float(new), base, what)
        if spike is not None:
            found.append(spike)
    return found


def _lift_report(analysis: lift.Analysis, names: dict[str, str]) -> dict[str, Any]:
    cells = analysis.cells
    k = len(cells.variants)
    seg_lift, seg_low, seg_high = analysis.lift_interval(analysis.segment_lift.estimate)
    rate_low, rate_high = analysis.rate_interval(analysis.rate)
    obs_low, obs_high = wilson_interval(cells.conversions, cells.exposures)
    naive = analysis.segment_lift
    with np.errstate(divide="ignore", invalid="ignore"):
        share = cells.exposures / cells.exposures.sum(1, keepdims=True)
        observed = cells.conversions / cells.exposures

    segments = []
    for i, key in enumerate(cells.segments):
        rows = []
        for j, variant in enumerate(cells.variants):
            flat = i * k + j
            flag = None
            if analysis.flagged_segment[i, j]:
                flag = "high_performer" if seg_lift[flat] > 0 else "underperformer"
            rows.append({
                "variant_id": variant,
                "exposures": int(cells.exposures[i, j]),
                "conversions": int(cells.conversions[i, j]),
                "share": _f(share[i, j]),
                "observed_rate": _f(observed[i, j]),
                "observed_ci95": _pair(obs_low[i, j], obs_high[i, j]),
                "rate": _f(analysis.rate.estimate[i, j]),
                "rate_interval": _pair(rate_low[i, j], rate_high[i, j]),
                "lift_vs_global": _f(seg_lift[flat]),
                "lift_interval": _pair(seg_low[flat], seg_high[flat]),
                "tested": bool(naive.guarded[flat]),
                "flag": flag,
                "naive": _naive(naive, flat),
            })  # fmt: skip
        segments.append({
            "segment_key": key, "decisions": int(cells.decisions[i]), "variants": rows,
            "comparisons": _comparisons(analysis, i),
        })  # fmt: skip

    total_n, total_c = cells.exposures.sum(0), cells.conversions.sum(0)
    g_low, g_high = analysis.rate_interval(analysis.global_rate)
    go_low, go_high = wilson_interval(total_c, total_n)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_share = total_n / total_n.sum()
        g_obs = total_c / total_n
    overall = [
        {
            "variant_id": variant,
            "exposures": int(total_n[j]),
            "conversions": int(total_c[j]),
            "share": _f(g_share[j]),
            "observed_rate": _f(g_obs[j]),
            "observed_ci95": _pair(go_low[j], go_high[j]),
            "rate": _f(analysis.global_rate.estimate[j]),
            "rate_interval": _pair(g_low[j], g_high[j]),
        }
        for j, variant in enumerate(cells.variants)
    ]
    decisions = float(cells.decisions.sum())
    report: dict[str, Any] = {
        "method": METHOD,
        "alpha": analysis.alpha,
        "design_n": sequential.DESIGN_N,
        "min_exposures": lift.MIN_EXPOSURES,
        "min_conversions": lift.MIN_CONVERSIONS,
        "hypotheses": analysis.hypotheses,
        "flagged": analysis.flagged,
        "interval_level": analysis.interval_level,
        "variants": list(cells.variants),
        "global": {
            "decisions": int(decisions),
            "exposures": int(total_n.sum()),
            "conversions": int(total_c.sum()),
            "observed_rate": _f(total_c.sum() / decisions) if decisions > 0 else None,
            "variants": overall,
            "comparisons": _comparisons(analysis, len(cells.segments)),
        },
        "segments": segments,
    }
    if names:
        report["variant_names"] = {v: names[v] for v in cells.variants if v in names}
    return report


def _naive(comparison: lift.Comparison, flat: int) -> dict[str, float | None]:
    return {
        "z": _f(comparison.naive_z[flat]),
        "p_value": _f(comparison.naive_p[flat]),
        "q_value": _f(comparison.naive_q[flat]),
        "cohens_h": _f(comparison.cohens_h[flat]),
    }


def _comparisons(analysis: lift.Analysis, row: int) -> list[dict[str, Any]]:
    cells = analysis.cells
    point, low, high = analysis.lift_interval(analysis.pair_lift.estimate)
    out = []
    for p, (a, b) in enumerate(analysis.pairs):
        flat = row * len(analysis.pairs) + p
        out.append({
            "variant_id": cells.variants[a],
            "versus": cells.variants[b],
            "lift": _f(point[flat]),
            "lift_interval": _pair(low[flat], high[flat]),
            "tested": bool(analysis.pair_lift.guarded[flat]),
            "decision_grade": bool(analysis.flagged_pair[row, p]),
            "naive": _naive(analysis.pair_lift, flat),
        })  # fmt: skip
    return out
