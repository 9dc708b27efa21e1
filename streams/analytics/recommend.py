"""Recommendations in plain language, with the numbers behind them.

Only decision-grade evidence (`lift.analyse` flags) becomes advice: `serve` a variant when
every pair it is in is flagged with it the higher rate; `target` / `investigate` a segment
whose rate of a variant is flagged above / below the variant's global rate. Otherwise, for
the experiment and its largest segments, the item names the variant the evidence favours,
the one whose always-valid rate interval has the highest lower end (ties, such as every end
at 0, broken by the rate), not the one with the highest point estimate: the rates are Hájek
rates (`ipw.py`), and a variant the bandit starved has a few exposures at small
propensities whose weights 1/p outweigh all its others, so two or three conversions among
them put its estimate far above its truth. (A demo named a
variant converting at 4 % the leader at 14.6 % on ~180 exposures; simulated, that variant's
rate has mean 4 %, median 2.3 %, an effective sample size about 22, and exceeds the favoured
variant's 12 % in 6 % of runs.) It says what is missing: exposures or conversions below the
guards, or how many more decisions the current estimate would need before its always-valid
interval excludes no lift (at the current traffic, how long).

Every rate in an item carries its always-valid interval, its exposures and, when the weights
1/p vary a lot, Kish's effective sample size (`ipw.kish`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from streams.analytics import sequential
from streams.analytics.ipw import kish
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
    if math.isnan(x):
        return "n/a"
    if x > LIFT_SHOWN_UP_TO:  # also +inf: an upper end against a rate whose interval reaches 0
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


EFFECTIVE_SHOWN_BELOW: Final = 0.5
"""A rate's message adds its effective sample size when that is below this share of its
exposures. Kish's n_eff / n = 1 / (1 + CV²) (CV: coefficient of variation of the weights
1/p), so this shows it once the weights' CV exceeds 1: a few exposures carry most of it."""


def _rate_text(rate: float, low: float, high: float, exposures: float, effective: float) -> str:
    text = f"{pct(rate)} [{pct(low)}, {pct(high)}] on {exposures:,.0f} exposures"
    if effective < EFFECTIVE_SHOWN_BELOW * exposures:  # False for NaN
        text += f" (effectively {effective:,.0f})"
    return text


@dataclass(frozen=True, eq=False)
class _Rates:
    """Per row (segments, then `*` for the experiment) and variant: a rate and its numbers."""

    rate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    exposures: np.ndarray
    effective: np.ndarray

    @classmethod
    def of(cls, analysis: Analysis) -> _Rates:
        cells = analysis.cells
        low, high = analysis.rate_interval(analysis.rate)
        g_low, g_high = analysis.rate_interval(analysis.global_rate)
        rate = np.vstack([analysis.rate.estimate, analysis.global_rate.estimate])
        return cls(
            rate, np.vstack([low, g_low]), np.vstack([high, g_high]),
            np.vstack([cells.exposures, cells.exposures.sum(0)]),
            np.vstack([kish(cells.w, cells.w2), kish(cells.w.sum(0), cells.w2.sum(0))]),
        )  # fmt: skip

    def evidence(self, r: int, j: int) -> tuple[float, float]:
        """The rank of a not-yet leader: the interval's lower end as shown (ties, such as
        every end at 0, broken by the rate), -inf without a rate."""
        return _or_minus_inf(self.low[r, j]), _or_minus_inf(self.rate[r, j])

    def text(self, r: int, j: int) -> str:
        return _rate_text(self.rate[r, j], self.low[r, j], self.high[r, j],
                          self.exposures[r, j], self.effective[r, j])  # fmt: skip

    def fields(self, r: int, j: int, prefix: str = "") -> dict[str, Any]:
        """The item's fields of this rate (`versus_` ones with `prefix` "versus_")."""
        return {
            f"{prefix}rate": _f(self.rate[r, j]),
            f"{prefix}rate_interval": [_f(self.low[r, j]), _f(self.high[r, j])],
            f"{prefix}exposures": int(self.exposures[r, j]),
            f"{prefix}effective_n": _f(self.effective[r, j]),
        }


def recommendations(
    analysis: Analysis, names: dict[str, str], decisions_per_second: float | None
) -> list[dict[str, Any]]:
    cells = analysis.cells
    items: list[dict[str, Any]] = []
    lift, low, high = analysis.lift_interval(analysis.pair_lift.estimate)
    log_lift = analysis.pair_lift.estimate.estimate
    pairs = analysis.pairs
    rows = [*cells.segments, "*"]
    rates = _Rates.of(analysis)
    conversions = np.vstack([cells.conversions, cells.conversions.sum(0)])
    decisions = np.append(cells.decisions, cells.decisions.sum())
    flagged = analysis.flagged_pair.ravel()
    p_count, k = len(pairs), len(cells.variants)

    def pair_index(row: int, a: int, b: int) -> tuple[int, float]:
        """Flat index of (a, b) or (b, a) in `row`, and the sign that makes it a vs b."""
        j = pairs.index((min(a, b), max(a, b)))
        return row * p_count + j, 1.0 if a < b else -1.0

    def others(v: int) -> list[int]:
        return [o for o in range(k) if o != v]

    def beats(row: int, a: int, b: int) -> bool:
        """a against b is decision-grade and a has the higher rate."""
        flat, sign = pair_index(row, a, b)
        return bool(flagged[flat]) and sign * float(log_lift[flat]) > 0

    order = sorted(range(len(cells.segments)), key=lambda i: -decisions[i])
    not_yet_rows = {len(rows) - 1, *order[:NOT_YET_ITEMS]}
    for r, key in enumerate(rows):
        if k < 2 or decisions[r] <= 0:
            continue
        winner = next((v for v in range(k) if all(beats(r, v, o) for o in others(v))), None)
        if winner is None and r not in not_yet_rows:
            continue
        # not decision-grade: the highest lower end
        leader = max(range(k), key=lambda v: rates.evidence(r, v)) if winner is None else winner
        # The runner is the strongest contender by its point estimate: when the evidence
        # names another leader than the point estimates do, the item sets the two side by
        # side, each with its interval, so the reader sees why the higher rate does not lead.
        # (The highest upper end would instead pick the least-observed variant: its interval
        # is the widest.)
        runner = max(others(leader), key=lambda o: _or_minus_inf(rates.rate[r, o]))
        flat, sign = pair_index(r, leader, runner)
        if sign > 0:
            point, lo, hi = float(lift[flat]), float(low[flat]), float(high[flat])
        else:  # b against a: 1 / (1 + lift) - 1, bounds swapped
            point, lo, hi = _flip(lift[flat]), _flip(high[flat]), _flip(low[flat])
        where = "the experiment" if key == "*" else key
        a, b = _name(names, cells.variants[leader]), _name(names, cells.variants[runner])
        numbers = (
            f"{a} converts {rates.text(r, leader)} vs {rates.text(r, runner)} for {b}, "
            f"{signed(point)} [{signed(lo)}, {signed(hi)}], n = {decisions[r]:,.0f} decisions"
        )
        base = {
            "segment_key": key, "variant_id": cells.variants[leader],
            "versus": cells.variants[runner], **rates.fields(r, leader),
            **rates.fields(r, runner, "versus_"), "lift": _f(point),
            "interval": [_f(lo), _f(hi)], "n": int(decisions[r]),
        }  # fmt: skip
        if winner is not None:
            items.append({**base, "status": "decision_grade", "action": "serve",
                          "message": f"{where}: {numbers} — decision-grade: {a} is the best "
                                     "variant here"})  # fmt: skip
            continue
        short = [
            _name(names, cells.variants[j]) for j in (leader, runner)
            if rates.exposures[r, j] < MIN_EXPOSURES or conversions[r, j] < MIN_CONVERSIONS
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
        lead = f" ({a} leads on its interval's lower end)" if point < 0 else ""
        message = f"{where}: {numbers} — not decision-grade yet{lead}: {_missing_text(missing)}"
        items.append(
            {**base, "status": "not_yet", "action": "wait", "missing": missing, "message": message}
        )
    items.extend(_segment_items(analysis, names, rates))
    return items


def _segment_items(
    analysis: Analysis, names: dict[str, str], rates: _Rates
) -> list[dict[str, Any]]:
    """High performers and underperformers (segment against the variant's global rate)."""
    cells = analysis.cells
    lift, low, high = analysis.lift_interval(analysis.segment_lift.estimate)
    k, total = len(cells.variants), len(cells.segments)  # `total`: the row of `*` in `rates`
    out = []
    for flat in np.nonzero(analysis.flagged_segment.ravel())[0]:
        i, j = divmod(int(flat), k)
        key, variant = cells.segments[i], cells.variants[j]
        up = lift[flat] > 0
        out.append({
            "segment_key": key, "variant_id": variant, "versus": "*",
            **rates.fields(i, j), **rates.fields(total, j, "versus_"),
            "lift": _f(lift[flat]), "interval": [_f(low[flat]), _f(high[flat])],
            "n": int(cells.decisions[i]),
            "status": "decision_grade", "action": "target" if up else "investigate",
            "message": (
                f"{key}: {_name(names, variant)} converts {rates.text(i, j)} vs "
                f"{rates.text(total, j)} globally, {signed(lift[flat])} "
                f"[{signed(low[flat])}, {signed(high[flat])}], "
                f"n = {cells.decisions[i]:,.0f} decisions — decision-grade "
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


def _or_minus_inf(x: float | np.floating[Any]) -> float:
    value = float(x)
    return value if math.isfinite(value) else -math.inf


def _f(x: float | np.floating[Any]) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None
