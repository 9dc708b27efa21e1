"""Insight documents for a person: a terminal table and a plot.

Input: documents as `build_insights` returns them, or as read back from `insights_history`
(`document` column) / the `insights` topic, e.g. the latest of each kind for one
experiment. `render_table` is pure (documents → text); `plot` writes one PNG (matplotlib,
Agg canvas, no pyplot state) and reads nothing else.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

Document = Mapping[str, Any]

MAX_PLOTTED_SEGMENTS = 12
WIDTH = 100
"""Messages are wrapped at this width; table rows are at most ~150 characters."""


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{100 * x:+.1f}%" if signed else f"{100 * x:.2f}%"


def _interval(pair: Sequence[float | None] | None, signed: bool = False) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f"[{_pct(pair[0], signed)}, {_pct(pair[1], signed)}]"


def _of_kind(documents: Sequence[Document], kind: str) -> list[Document]:
    return [d for d in documents if d.get("kind") == kind]


def render_table(documents: Sequence[Document]) -> str:
    """Segments × variants with rates, intervals, lifts and flags, then the comparisons that
    are decision-grade, the anomalies and the recommendations; plain text (rows of at most
    ~150 columns, messages wrapped at 100)."""
    lines: list[str] = []
    reports = _of_kind(documents, "lift_report")
    if reports:
        doc = reports[-1]
        report = doc["report"]
        names = report.get("variant_names", {})
        lines.append(
            f"experiment {doc['experiment_id']} · snapshot {doc['snapshot_version']} taken "
            f"{doc['taken_at']} · α = {report['alpha']} · {report['flagged']} of "
            f"{report['hypotheses']} hypotheses decision-grade"
        )
        lines.append(
            "rate = inverse-propensity rate with its always-valid interval; observed = raw "
            "rate with Wilson 95 %; lift = segment rate vs the variant's global rate"
        )
        header = (
            f"{'segment':<34} {'variant':<14} {'n':>7} {'share':>6} {'observed':>8} "
            f"{'rate [interval]':<27} {'lift [interval]':<29} flag"
        )
        lines += ["", header, "-" * len(header)]
        glob = report["global"]
        for row in glob["variants"]:
            lines.append(_row("* (experiment)", row, names))
        ordered = sorted(report["segments"], key=lambda s: -s["decisions"])
        for segment in ordered:
            for row in segment["variants"]:
                lines.append(_row(segment["segment_key"], row, names))
        decided = [
            (s["segment_key"], c)
            for s in [{"segment_key": "*", "comparisons": glob["comparisons"]}, *ordered]
            for c in s["comparisons"]
            if c["decision_grade"]
        ]
        lines += ["", f"decision-grade variant comparisons: {len(decided) or 'none'}"]
        for key, c in decided:
            better, worse = c["variant_id"], c["versus"]
            lift, (low, high) = c["lift"], c["lift_interval"]
            if lift is not None and lift < 0:  # say it from the winner's side
                better, worse = worse, better
                lift, low, high = _flip(lift), _flip(high), _flip(low)
            lines.append(
                f"  {key}: {names.get(better, better)} beats {names.get(worse, worse)} by "
                f"{_pct(lift, True)} {_interval([low, high], True)}"
            )
    anomalies = _of_kind(documents, "anomaly")
    lines += ["", f"anomalies: {len(anomalies) or 'none'}"]
    for doc in anomalies:
        lines += _wrap(f"[{doc['report']['severity']}] {doc['report']['message']}")
    recommendations = _of_kind(documents, "recommendation")
    items = recommendations[-1]["report"]["items"] if recommendations else []
    lines += ["", f"recommendations: {len(items) or 'none'}"]
    for item in sorted(items, key=lambda i: i["status"] != "decision_grade"):
        lines += _wrap(item["message"])
    return "\n".join(lines).strip() + "\n"


def _flip(x: float | None) -> float | None:
    """Lift of b over a from the lift of a over b: 1 / (1 + x) - 1."""
    return None if x is None or x <= -1.0 else 1.0 / (1.0 + x) - 1.0


def _wrap(text: str) -> list[str]:
    glued = text.replace(" %", "\u00a0%").replace("n = ", "n\u00a0=\u00a0")
    lines = textwrap.wrap(glued, WIDTH, initial_indent="  - ", subsequent_indent="    ")
    return [line.replace("\u00a0", " ") for line in lines]


def _row(segment: str, row: Mapping[str, Any], names: Mapping[str, str]) -> str:
    variant = names.get(row["variant_id"], row["variant_id"])
    rate = f"{_pct(row.get('rate'))} {_interval(row.get('rate_interval'))}"
    lift = ""
    if "lift_vs_global" in row:
        lift = f"{_pct(row['lift_vs_global'], True)} {_interval(row['lift_interval'], True)}"
    flag = (row.get("flag") or "").replace("_", " ")
    share = "–" if row.get("share") is None else f"{100 * row['share']:.0f}%"
    return (
        f"{segment[:34]:<34} {variant[:14]:<14} {row['exposures']:>7,} {share:>6} "
        f"{_pct(row.get('observed_rate')):>8} {rate:<27} {lift:<29} {flag}"
    ).rstrip()


def plot(
    documents: Sequence[Document], history_documents: Sequence[Document], path: str | Path
) -> Path:
    """Per-segment rates with intervals (largest segments) and the allocation over time.

    `documents`: the latest documents (a `lift_report` among them). `history_documents`:
    earlier `lift_report` documents of the same experiment, any order; the allocation
    over time is each variant's share of the exposures added between consecutive reports.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    latest = _of_kind(documents, "lift_report")
    figure = Figure(figsize=(11, 8), layout="constrained")
    FigureCanvasAgg(figure)
    rates_axes, allocation_axes = figure.subplots(2, 1, height_ratios=(3, 2))
    if latest:
        _plot_rates(rates_axes, latest[-1])
        reports = sorted(
            _of_kind([*history_documents, latest[-1]], "lift_report"), key=lambda d: d["taken_at"]
        )
        _plot_allocation(allocation_axes, reports)
    else:
        rates_axes.text(0.5, 0.5, "no lift report yet", ha="center", va="center")
    target = Path(path)
    figure.savefig(target, dpi=110)
    return target


def _plot_rates(axes: Any, doc: Document) -> None:
    report = doc["report"]
    names = report.get("variant_names", {})
    variants = report["variants"]
    segments = sorted(report["segments"], key=lambda s: -s["decisions"])[:MAX_PLOTTED_SEGMENTS]
    rows = [("* (experiment)", report["global"]["variants"])] + [
        (s["segment_key"], s["variants"]) for s in segments
    ]
    width = 0.8 / max(len(variants), 1)
    for j, variant in enumerate(variants):
        xs, ys, low, high = [], [], [], []
        for i, (_, cells) in enumerate(rows):
            cell = next((c for c in cells if c["variant_id"] == variant), None)
            if cell is None or cell.get("rate") is None:
                continue
            lo, hi = cell["rate_interval"]
            xs.append(i + (j - (len(variants) - 1) / 2) * width)
            ys.append(100 * cell["rate"])
            # an IPW estimate can lie outside its interval (clipped to [0, 1]; the estimate
            # itself is not, e.g. 1.08 from a few rare-propensity conversions): bars from
            # the point to the interval's ends, never negative
            low.append(max(0.0, 100 * (cell["rate"] - (lo if lo is not None else cell["rate"]))))
            high.append(max(0.0, 100 * ((hi if hi is not None else cell["rate"]) - cell["rate"])))
        axes.errorbar(xs, ys, yerr=[low, high], fmt="o", capsize=3,
                      label=names.get(variant, variant))  # fmt: skip
    axes.set_xticks(range(len(rows)), [key for key, _ in rows], rotation=30, ha="right",
                    fontsize=8)  # fmt: skip
    axes.set_ylabel("conversion rate, % (IPW, always-valid interval)")
    axes.set_title(
        f"{doc['experiment_id']} · snapshot {doc['snapshot_version']} · {doc['taken_at']}"
    )
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)


def _plot_allocation(axes: Any, reports: Sequence[Document]) -> None:
    variants = reports[-1]["report"]["variants"]
    names = reports[-1]["report"].get("variant_names", {})
    times: list[datetime] = []
    shares: dict[str, list[float]] = {v: [] for v in variants}
    previous: dict[str, int] = {}
    for doc in reports:
        now = {r["variant_id"]: r["exposures"] for r in doc["report"]["global"]["variants"]}
        added = {v: now.get(v, 0) - previous.get(v, 0) for v in variants}
        total = sum(max(a, 0) for a in added.values())
        if total > 0:
            times.append(datetime.fromisoformat(doc["taken_at"].replace("Z", "+00:00")))
            for v in variants:
                shares[v].append(max(added[v], 0) / total)
        previous = now
    if times:
        axes.stackplot(times, *(shares[v] for v in variants),
                       labels=[names.get(v, v) for v in variants], step="pre")  # fmt: skip
        axes.legend(fontsize=8, loc="upper left")
    else:
        axes.text(0.5, 0.5, "no history yet", ha="center", va="center")
    axes.set_ylim(0, 1)
    axes.set_ylabel("share of new exposures")
    axes.set_title("allocation over time (experiment)")
