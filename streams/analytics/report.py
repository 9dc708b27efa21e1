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
from datetime import UTC, datetime
from typing import Any

import numpy as np

from streams.analytics import anomalies, lift, recommend, sequential
from streams.analytics.fixed import wilson_interval
from streams.analytics.ipw import Cells
from streams.core.snapshot import ExperimentSnapshot

METHOD = "ipw-asymptotic-confidence-sequence+e-bh"


def _utc(moment: datetime) -> datetime:
    """Aware UTC (a naive datetime is taken as UTC, never an error)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _ts(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _f(x: Any) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None  # NaN / inf: JSON null


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
        seconds = (_utc(snapshot.taken_at) - _utc(earlier.taken_at)).total_seconds()
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
    point, low, high = analysis.lift_interval(analysis.pair_lift.estimate)
    pair_interval = (point.tolist(), low.tolist(), high.tolist())
    pairs = analysis.pair_lift
    pair_naive = [c.tolist() for c in (pairs.naive_z, pairs.naive_p, pairs.naive_q, pairs.cohens_h)]
    rate_low, rate_high = analysis.rate_interval(analysis.rate)
    obs_low, obs_high = wilson_interval(cells.conversions, cells.exposures)
    naive = analysis.segment_lift
    with np.errstate(divide="ignore", invalid="ignore"):
        share = cells.exposures / cells.exposures.sum(1, keepdims=True)
        observed = cells.conversions / cells.exposures

    # python lists: element access on numpy arrays costs ~10x more in these loops
    exposures, conversions = cells.exposures.tolist(), cells.conversions.tolist()
    share_l, observed_l = share.tolist(), observed.tolist()
    obs_low_l, obs_high_l = obs_low.tolist(), obs_high.tolist()
    rate_l = analysis.rate.estimate.tolist()
    rate_low_l, rate_high_l = rate_low.tolist(), rate_high.tolist()
    seg_lift_l, seg_low_l, seg_high_l = seg_lift.tolist(), seg_low.tolist(), seg_high.tolist()
    guarded = naive.guarded.tolist()
    flagged = analysis.flagged_segment.tolist()
    naive_cols = [c.tolist() for c in (naive.naive_z, naive.naive_p, naive.naive_q, naive.cohens_h)]
    segments = []
    for i, key in enumerate(cells.segments):
        rows = []
        for j, variant in enumerate(cells.variants):
            flat = i * k + j
            flag = None
            if flagged[i][j]:
                flag = "high_performer" if seg_lift_l[flat] > 0 else "underperformer"
            rows.append({
                "variant_id": variant,
                "exposures": int(exposures[i][j]),
                "conversions": int(conversions[i][j]),
                "share": _f(share_l[i][j]),
                "observed_rate": _f(observed_l[i][j]),
                "observed_ci95": _pair(obs_low_l[i][j], obs_high_l[i][j]),
                "rate": _f(rate_l[i][j]),
                "rate_interval": _pair(rate_low_l[i][j], rate_high_l[i][j]),
                "lift_vs_global": _f(seg_lift_l[flat]),
                "lift_interval": _pair(seg_low_l[flat], seg_high_l[flat]),
                "tested": bool(guarded[flat]),
                "flag": flag,
                "naive": _naive_row(naive_cols, flat),
            })  # fmt: skip
        segments.append({
            "segment_key": key, "decisions": int(cells.decisions[i]), "variants": rows,
            "comparisons": _comparisons(analysis, pair_interval, pair_naive, i),
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
            "comparisons": _comparisons(analysis, pair_interval, pair_naive, len(cells.segments)),
        },
        "segments": segments,
    }
    if names:
        report["variant_names"] = {v: names[v] for v in cells.variants if v in names}
    return report


def _naive_row(columns: list[list[float]], flat: int) -> dict[str, float | None]:
    z, p, q, h = columns
    return {
        "z": _f(z[flat]),
        "p_value": _f(p[flat]),
        "q_value": _f(q[flat]),
        "cohens_h": _f(h[flat]),
    }


def _comparisons(
    analysis: lift.Analysis,
    interval: tuple[list[float], list[float], list[float]],
    naive: list[list[float]],
    row: int,
) -> list[dict[str, Any]]:
    cells = analysis.cells
    point, low, high = interval
    guarded = analysis.pair_lift.guarded
    out = []
    for p, (a, b) in enumerate(analysis.pairs):
        flat = row * len(analysis.pairs) + p
        out.append({
            "variant_id": cells.variants[a],
            "versus": cells.variants[b],
            "lift": _f(point[flat]),
            "lift_interval": _pair(low[flat], high[flat]),
            "tested": bool(guarded[flat]),
            "decision_grade": bool(analysis.flagged_pair[row, p]),
            "naive": _naive_row(naive, flat),
        })  # fmt: skip
    return out
