"""recommendations: the leader of a not-yet item is the variant the evidence favours, a
decision-grade winner is the higher rate in every flagged pair, and every rate comes with
its interval, exposures and effective sample size. Plain values, no I/O."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

from streams.analytics.ipw import Cells
from streams.analytics.lift import analyse
from streams.analytics.recommend import EFFECTIVE_SHOWN_BELOW, pct, recommendations, signed

pytestmark = pytest.mark.unit

D = "device:desktop|source:google"
NAMES = {"a": "headline-a", "b": "headline-b", "c": "headline-c"}
Group = tuple[int, int, float]  # exposures, conversions, their propensity


def cells(segments: dict[str, list[list[Group]]]) -> Cells:
    """Cells of segments given per variant as groups of exposures at one propensity."""
    sums = {name: [] for name in ("exposures", "conversions", "w", "w2", "y", "y2")}
    for variants in segments.values():
        rows: dict[str, list[float]] = {name: [] for name in sums}
        for groups in variants:
            n, c, p = (np.array(x, dtype=float) for x in zip(*groups, strict=True))
            for name, value in (("exposures", n), ("conversions", c), ("w", n / p),
                                ("w2", n / p**2), ("y", c / p), ("y2", c / p**2)):  # fmt: skip
                rows[name].append(float(value.sum()))
        for name in sums:
            sums[name].append(rows[name])
    arrays = {name: np.array(rows) for name, rows in sums.items()}
    k = arrays["exposures"].shape[1]
    zeros = np.zeros_like(arrays["exposures"])
    return Cells(tuple(segments), ("a", "b", "c")[:k], value=zeros, repeat=zeros,
                 decisions=arrays["exposures"].sum(1), **arrays)  # fmt: skip


def items(segments: dict[str, list[list[Group]]]) -> list[dict[str, Any]]:
    return recommendations(analyse(cells(segments)), NAMES, None)


def only(found: list[dict[str, Any]], key: str, status: str) -> dict[str, Any]:
    (item,) = [i for i in found if i["segment_key"] == key and i["status"] == status]
    return item


# The demo's segment (true rates a/b/c = 4 / 3 / 12 %): uniform 1/3 at first, then the bandit
# sent ~95 % to c; the starved a and b kept a few exposures at p = 0.005 (weights 1/p = 200),
# and 3 of a's 20 converted. a's Hájek rate is (6·3 + 3·200) / (160·3 + 20·200) = 13.8 %,
# above c's 12.0 %, from 180 exposures of Kish effective size 4480² / (160·9 + 20·40000)
# = 25.0: the point estimate says a, the evidence says c.
A_GROUPS: list[Group] = [(160, 6, 1 / 3), (20, 3, 0.005)]
DEMO = {D: [A_GROUPS, [(60, 2, 1 / 3), (13, 0, 0.005)], [(150, 18, 1 / 3), (4151, 498, 0.95)]]}


def test_a_starved_variant_with_a_lucky_high_rate_is_not_named_the_leader() -> None:
    item = only(items(DEMO), D, "not_yet")
    assert (item["variant_id"], item["versus"]) == ("c", "a")
    assert item["versus_rate"] == pytest.approx(618 / 4480)  # a's point estimate is higher
    assert item["rate"] == pytest.approx((54 + 498 / 0.95) / (450 + 4151 / 0.95))
    assert item["versus_rate"] > item["rate"]
    # the lift is the named leader against the runner
    assert item["lift"] == pytest.approx(item["rate"] / item["versus_rate"] - 1)
    assert item["interval"][0] < item["lift"] < item["interval"][1]
    for side in ("", "versus_"):
        low, high = item[f"{side}rate_interval"]
        assert low <= item[f"{side}rate"] <= high
    assert (item["exposures"], item["versus_exposures"], item["n"]) == (4301, 180, 4554)
    assert item["versus_effective_n"] == pytest.approx(4480**2 / (160 * 9 + 20 * 200**2))
    assert item["effective_n"] > EFFECTIVE_SHOWN_BELOW * item["exposures"]  # not shown
    low, high = item["versus_rate_interval"]
    assert high - low > np.diff(item["rate_interval"])[0]  # the interval says how little is known
    starved = f"{pct(item['versus_rate'])} [{pct(low)}, {pct(high)}] on 180 exposures"
    message = item["message"]
    assert message.startswith(f"{D}: headline-c converts {pct(item['rate'])} [")
    assert f"on 4,301 exposures vs {starved} (effectively 25) for headline-a" in message
    assert "n = 4,554 decisions" in message
    assert "headline-c leads on its interval's lower end" in message
    assert "short: headline-a" in message  # 9 conversions < 10


def test_the_variant_the_evidence_favours_is_named() -> None:
    # b 5.0 % vs a 4.0 % on 2,000 exposures each at p = 1/2: b's rate and its lower end are
    # the higher, the difference is not decision-grade yet
    found = items({D: [[(2000, 80, 0.5)], [(2000, 100, 0.5)]]})
    item = only(found, D, "not_yet")
    assert (item["variant_id"], item["versus"]) == ("b", "a")
    assert item["lift"] == pytest.approx(0.25)
    assert item["interval"][0] < 0.25 < item["interval"][1]
    assert item["effective_n"] == pytest.approx(2000)  # equal weights: every exposure counts
    assert re.search(r"headline-b converts 5\.0 % \[\d\.\d %, \d\.\d %\] on 2,000 exposures "
                     r"vs 4\.0 % \[\d\.\d %, \d\.\d %\] on 2,000 exposures for headline-a, "
                     r"\+25 % ", item["message"])  # fmt: skip
    assert "effectively" not in item["message"] and "leads on" not in item["message"]


def test_a_decision_grade_winner_beats_every_other_variant() -> None:
    # c converts 9 % against 3 % and 4 %, 3,000 exposures each at p = 1/3
    three = [[(3000, 90, 1 / 3)], [(3000, 120, 1 / 3)], [(3000, 270, 1 / 3)]]
    item = only(items({D: three}), D, "decision_grade")
    assert (item["variant_id"], item["versus"], item["action"]) == ("c", "b", "serve")
    assert item["interval"][0] > 0 and item["lift"] == pytest.approx(270 / 120 - 1)
    assert item["message"].endswith("decision-grade: headline-c is the best variant here")


def test_segment_items_carry_both_rates_numbers() -> None:
    # b converts 10 % in one segment, 3 % in the other; a 3 % in both (p = 1/2)
    segments = {
        "s:1": [[(3000, 90, 0.5)], [(3000, 300, 0.5)]],
        "s:2": [[(3000, 90, 0.5)], [(3000, 90, 0.5)]],
    }
    found = [i for i in items(segments) if i["versus"] == "*"]
    high = next(i for i in found if i["action"] == "target")
    assert (high["segment_key"], high["variant_id"]) == ("s:1", "b")
    assert (high["exposures"], high["versus_exposures"]) == (3000, 6000)
    assert high["versus_rate"] == pytest.approx(0.065)
    for side in ("", "versus_"):
        low, hi = high[f"{side}rate_interval"]
        assert low <= high[f"{side}rate"] <= hi
    assert "on 3,000 exposures vs 6.5 % [" in high["message"]
    assert "on 6,000 exposures globally" in high["message"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_leaders_and_winners_follow_the_rule(seed: int) -> None:
    """Whatever the counts: a not-yet leader has the highest lower end of its row (then the
    highest rate), a
    decision-grade winner is the higher rate of every flagged pair it is in."""
    rng = np.random.default_rng(seed)
    segments = {}
    for i in range(12):
        pi = rng.dirichlet([1.0, 1.0, 1.0])
        shown = rng.multinomial(int(rng.integers(200, 20_000)), pi)
        truth = rng.uniform(0.02, 0.12, 3)
        segments[f"seg:{i:02d}"] = [
            [(int(n), int(rng.binomial(n, t)), float(p))]
            for n, t, p in zip(shown, truth, pi, strict=True)
        ]
    analysis = analyse(cells(segments))
    rows = [*analysis.cells.segments, "*"]
    rate = np.vstack([analysis.rate.estimate, analysis.global_rate.estimate])
    low = np.vstack([analysis.rate_interval(analysis.rate)[0],
                     analysis.rate_interval(analysis.global_rate)[0]])  # fmt: skip
    # the lower end as shown, ties (ends at 0) broken by the rate
    evidence = [
        [(lo, r) for lo, r in zip(*row, strict=True)] for row in zip(low, rate, strict=True)
    ]
    log_lift = analysis.pair_lift.estimate.estimate.reshape(len(rows), -1)
    for item in recommendations(analysis, NAMES, None):
        if item["versus"] == "*":
            continue
        r, v = rows.index(item["segment_key"]), "abc".index(item["variant_id"])
        if item["status"] == "not_yet":
            assert evidence[r][v] == max(evidence[r])
            continue
        for p, (a, b) in enumerate(analysis.pairs):
            if v in (a, b):
                assert analysis.flagged_pair[r, p]
                assert (log_lift[r, p] > 0) == (v == a)


def test_when_every_lower_end_is_zero_the_higher_rate_leads() -> None:
    # 30 exposures each at p = 0.01: 1 and 4 conversions (3.3 % and 13.3 %). Both always-valid
    # intervals reach 0 (a handful of conversions at weight 100), so the shown lower ends tie
    # and the rate decides; unclipped, a's end (narrower: fewer conversions) would rank first.
    thin = {D: [[(30, 1, 0.01)], [(30, 4, 0.01)]]}
    analysis = analyse(cells(thin))
    low, _ = analysis.rate_interval(analysis.rate)
    assert low[0].tolist() == [0.0, 0.0]
    item = only(recommendations(analysis, NAMES, None), D, "not_yet")
    assert (item["variant_id"], item["versus"]) == ("b", "a")
    assert item["lift"] > 0 and "leads on its interval's lower end" not in item["message"]


def test_an_unbounded_upper_end_reads_as_above_the_cap() -> None:
    # b against a whose interval reaches 0 (a demo printed "[-100 %, n/a]"): the flipped
    # lower end -1 gives 1 / 0 - 1 = +inf
    assert signed(math.inf) == signed(11.0) == "> +1000 %"
    assert signed(math.nan) == "n/a" and signed(-1.0) == "-100 %"
