"""Recommendations in plain language, with the numbers behind them.

Only decision-grade evidence (`lift.analyse` flags) becomes advice. Otherwise the item says
what is missing: exposures or conversions below the guards, or how many more decisions the
current estimate would need before its always-valid interval excludes no lift (at the
current traffic, how long).
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np

from streams.analytics import sequential
from streams.analytics.lift import MIN_CONVERSIONS, MIN_EXPOSURES, Analysis

NOT_YET_ITEMS: Final = 5
"""'Not yet' items: the experiment and its largest segments, at most this many segments."""
_GROWTH: Final = np.geomspace(1.0, 1000.0, 120)
"""Traffic multiples tried by `_needed` (up to 1000x the decisions so far)."""


def pct(x: float) -> str:
    return f"{100 * x:.1f} %" if math.isfinite(x) else "n/a"


LIFT_SHOWN_UP_TO: Final = 10.0
"""Lifts above +1000 % are written "> +1000 %": an interval's upper end can be astronomic
when the variant compared with has hardly converted, and its digits say nothing."""


def signed(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    if x > LIFT_SHOWN_UP_TO:
        return f"> {100 * LIFT_SHOWN_UP_TO:+.0f} %"
    return f"{100 * x:+.0f} %"


def _name(names: dict[str, str], variant: str) -> str:
    return names.get(variant, variant)


def _needed(analysis: Analysis, estimate: float, se: float, n: float) -> float | None:
    """Decisions at which |estimate| would clear the α/m sequence, if it held; None = never."""
    if not (math.isfinite(estimate) and math.isfinite(se) and se > 0 and n > 0):
        return None
    level = analysis.alpha / max(analysis.hypotheses, 1)
    growth = _GROWTH
    half = sequential.boundary(n * growth, level, analysis.alpha) * se / np.sqrt(growth)
    enough = np.nonzero(half < abs(estimate))[0]
    return float(n * growth[enough[0]]) if enough.size else None


def recommendations(
    analysis: Analysis, names: dict[str, str], decisions_per_second: float | None
) -> list[dict[str, Any]]:
    cells = analysis.cells
    items: list[dict[str, Any]] = []
    lift, low, high = analysis.lift_interval(analysis.pair_lift.estimate)
    pairs = analysis.pairs
    rows = [*cells.segments, "*"]
    rates = np.vstack([analysis.rate.estimate, analysis.global_rate.estimate[None, :]])
    exposures = np.vstack([cells.exposures, cells.exposures.sum(0)[None, :]])
    conversions = np.vstack([cells.conversions, cells.conversions.sum(0)[None, :]])
    decisions = np.append(cells.decisions, cells.decisions.sum())
    flagged = analysis.flagged_pair
    p_count = len(pairs)

    def pair_index(row: int, a: int, b: int) -> tuple[int, float]:
        """Flat index of (a, b) or (b, a) in `row`, and the sign that makes it a vs b."""
        j = pairs.index((min(a, b), max(a, b)))
        return row * p_count + j, 1.0 if a < b else -1.0

    order = sorted(range(len(cells.segments)), key=lambda i: -decisions[i])
    not_yet_rows = {len(rows) - 1, *order[:NOT_YET_ITEMS]}
    for r, key in enumerate(rows):
        if len(cells.variants) < 2 or decisions[r] <= 0:
            continue
        ranked = [int(j) for j in np.argsort(-np.nan_to_num(rates[r], nan=-1.0))]
        leader, runner = ranked[0], ranked[1]
        beats_all = all(flagged[r, pairs.index((min(leader, o), max(leader, o)))]
                        for o in ranked[1:])  # fmt: skip
        flat, sign = pair_index(r, leader, runner)
        if sign > 0:
            point, lo, hi = float(lift[flat]), float(low[flat]), float(high[flat])
        else:  # b against a: 1 / (1 + lift) - 1, bounds swapped
            point, lo, hi = _flip(lift[flat]), _flip(high[flat]), _flip(low[flat])
        where = "the experiment" if key == "*" else key
        a, b = _name(names, cells.variants[leader]), _name(names, cells.variants[runner])
        numbers = (
            f"{a} converts {pct(rates[r, leader])} vs {pct(rates[r, runner])} for {b}, "
            f"{signed(point)} [{signed(lo)}, {signed(hi)}], "
            f"n = {decisions[r]:,.0f}"
        )
        base = {
            "segment_key": key, "variant_id": cells.variants[leader],
            "versus": cells.variants[runner], "rate": _f(rates[r, leader]),
            "versus_rate": _f(rates[r, runner]), "lift": _f(point),
            "interval": [_f(lo), _f(hi)], "n": int(decisions[r]),
        }  # fmt: skip
        if beats_all:
            items.append({**base, "status": "decision_grade", "action": "serve",
                          "message": f"{where}: {numbers} — decision-grade: {a} is the best "
                                     "variant here"})  # fmt: skip
            continue
        if r not in not_yet_rows:
            continue
        short = [
            cells.variants[j] for j in (leader, runner)
            if exposures[r, j] < MIN_EXPOSURES or conversions[r, j] < MIN_CONVERSIONS
        ]  # fmt: skip
        if short:
            missing = {
                "samples": f"each variant needs ≥ {MIN_EXPOSURES} exposures and ≥ "
                f"{MIN_CONVERSIONS} conversions; short: {', '.join(short)}"
            }
        else:
            est = analysis.pair_lift.estimate
            needed = _needed(analysis, sign * float(est.estimate[flat]),
                             float(est.standard_error[flat]), float(decisions[r]))  # fmt: skip
            if needed is None:
                missing = {"samples": "no difference visible: even 1000x the traffic would "
                                      "not make this lift decision-grade"}  # fmt: skip
            else:
                more = needed - decisions[r]
                missing = {"more_decisions": math.ceil(more)}
                if decisions_per_second and decisions_per_second > 0:
                    missing["eta_seconds"] = math.ceil(more / decisions_per_second)
        text = _missing_text(missing)
        message = f"{where}: {numbers} — not decision-grade yet: {text}"
        items.append(
            {**base, "status": "not_yet", "action": "wait", "missing": missing, "message": message}
        )
    items.extend(_segment_items(analysis, names))
    return items


def _segment_items(analysis: Analysis, names: dict[str, str]) -> list[dict[str, Any]]:
    """High performers and underperformers (segment against the variant's global rate)."""
    cells = analysis.cells
    lift, low, high = analysis.lift_interval(analysis.segment_lift.estimate)
    k = len(cells.variants)
    out = []
    for flat in np.nonzero(analysis.flagged_segment.ravel())[0]:
        i, j = divmod(int(flat), k)
        key, variant = cells.segments[i], cells.variants[j]
        rate, overall = analysis.rate.estimate[i, j], analysis.global_rate.estimate[j]
        up = lift[flat] > 0
        out.append({
            "segment_key": key, "variant_id": variant, "versus": "*", "rate": _f(rate),
            "versus_rate": _f(overall), "lift": _f(lift[flat]),
            "interval": [_f(low[flat]), _f(high[flat])], "n": int(cells.decisions[i]),
            "status": "decision_grade", "action": "target" if up else "investigate",
            "message": (
                f"{key}: {_name(names, variant)} converts {pct(rate)} vs {pct(overall)} "
                f"globally, {signed(lift[flat])} [{signed(low[flat])}, {signed(high[flat])}], "
                f"n = {cells.decisions[i]:,.0f} — decision-grade "
                + ("high performer" if up else "underperformer")
            ),
        })  # fmt: skip
    return out


def _flip(x: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(1.0) / (1.0 + x) - 1.0)


def _missing_text(missing: dict[str, Any]) -> str:
    if "samples" in missing:
        return str(missing["samples"])
    text = f"needs about {missing['more_decisions']:,} more visits"
    if "eta_seconds" in missing:
        text += f" (about {_duration(missing['eta_seconds'])} at the current traffic)"
    return text + " if the lift holds"


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} days"


def _f(x: float | np.floating[Any]) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None
