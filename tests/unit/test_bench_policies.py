"""`bench policies`: arguments, the JSON contract on stdout, the table, the statistics."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from streams.bench import policies as bench

pytestmark = pytest.mark.unit

METRICS = {
    "regret_mean",
    "regret_sd",
    "regret_se",
    "regrets",
    "best_share",
    "final_best_share",
    "visits_to_95",
    "conversions_vs_uniform",
}
RESET_METRICS = {
    "regret_mean",
    "regret_sd",
    "regret_se",
    "regrets",
    "best_share",
    "min_probability",
}
RATIOS = {"pooled / global", "pooled / segment", "pooled / min(global, segment)"}
# Student t 0.975 quantiles from a table: 1 and 2 degrees of freedom.
T_1 = 12.706204736
T_2 = 4.302652730


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    args = _args()
    assert args.visits == 100_000
    assert args.steps == 1_000_000
    assert args.seeds == 5
    assert args.first_seed == 20241
    assert args.json is False
    assert bench.delays(args.delay) == [100]
    assert bench.scenario_names(args.scenario) == [
        "heterogeneous",
        "homogeneous",
        "sparse",
        "drift",
        "delayed",
        "chapelle-li",
    ]


def test_scenarios_repeatable_or_comma_separated() -> None:
    args = _args("--scenario", "drift,sparse", "--scenario", "drift", "--scenario", "delayed")
    assert bench.scenario_names(args.scenario) == ["drift", "sparse", "delayed"]
    with pytest.raises(SystemExit):
        _args("--visits", "0")
    assert bench.delays(_args("--delay", "1,100", "--delay", "1000").delay) == [1, 100, 1000]


def test_json_is_one_object_and_nothing_else(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench.main(
        _args(
            "--visits",
            "1500",
            "--seeds",
            "2",
            "--scenario",
            "homogeneous,drift",
            "--json",
            "--jobs",
            "1",
        )
    )
    assert code == 0
    out = capsys.readouterr().out
    document = json.loads(out)  # the whole of stdout parses as one JSON value
    assert list(document) == ["scenarios", "ratios", "seeds"]
    assert document["seeds"] == [20241, 20242]
    assert list(document["ratios"]) == ["homogeneous", "drift"]
    for ratios in document["ratios"].values():
        assert set(ratios) == RATIOS
        for ratio in ratios.values():
            assert ratio["ci95_low"] <= ratio["ratio"] <= ratio["ci95_high"]
    assert list(document["scenarios"]) == ["homogeneous", "drift"]
    assert list(document["scenarios"]["homogeneous"]) == ["uniform", "global", "segment", "pooled"]
    assert list(document["scenarios"]["drift"]) == [
        "uniform",
        "global",
        "segment",
        "pooled",
        "global discount=0.97",
        "pooled discount=0.97",
    ]
    for by_policy in document["scenarios"].values():
        for row in by_policy.values():
            assert set(row) == METRICS
            assert row["regret_sd"] >= 0
            assert len(row["regrets"]) == 2
            assert row["regret_se"] == pytest.approx(row["regret_sd"] / math.sqrt(2))
            assert 0 <= row["best_share"] <= 1
            assert 0 <= row["final_best_share"] <= 1
            assert row["visits_to_95"] is None or isinstance(row["visits_to_95"], int)


def test_reset_harness_rows(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench.main(
        _args(
            "--steps", "2000", "--seeds", "1", "--scenario", "chapelle-li", "--delay", "100",
            "--json", "--jobs", "1",
        )
    )  # fmt: skip
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    rows = document["scenarios"]["chapelle-li delay=100"]
    assert list(rows) == ["thompson (sampled)", "global", "global floor=0", "global fixed floor"]
    for row in rows.values():
        assert set(row) == RESET_METRICS
    assert rows["thompson (sampled)"]["min_probability"] is None
    assert rows["global fixed floor"]["min_probability"] == pytest.approx(0.01)


def test_table_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        bench.main(_args("--visits", "800", "--seeds", "1", "--scenario", "sparse", "--jobs", "1"))
        == 0
    )
    captured = capsys.readouterr()
    for word in ("regret_mean", "visits_to_95", "uniform", "global", "segment", "pooled", "sparse"):
        assert word in captured.out
    assert "sparse done" in captured.err  # progress goes to stderr only
    assert "pooled / min(global, segment) = " in captured.out


def test_unknown_scenario_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(_args("--scenario", "chaos")) == 2
    captured = capsys.readouterr()
    assert "unknown scenario" in captured.err
    assert captured.out == ""


def test_first_seed_shifts_the_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    def regrets(*argv: str) -> list[float]:
        common = ("--visits", "600", "--scenario", "homogeneous", "--json", "--jobs", "1")
        assert bench.main(_args(*argv, *common)) == 0
        document = json.loads(capsys.readouterr().out)
        return list(document["scenarios"]["homogeneous"]["pooled"]["regrets"])

    two = regrets("--seeds", "2")
    assert regrets("--seeds", "1", "--first-seed", "20242") == two[1:]


def test_standard_error() -> None:
    assert bench.standard_error([1.0, 2.0, 3.0]) == pytest.approx(1 / math.sqrt(3))  # sd 1
    assert bench.standard_error([5.0, 5.0]) == 0.0
    assert bench.standard_error([5.0]) is None


def test_identical_per_seed_ratios_give_a_zero_width_interval() -> None:
    # x_i / X - y_i / Y = 0 for every seed: the seeds' spread is shared, none is left
    assert bench.ratio_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx((2, 2, 2))
    assert bench.ratio_interval([7.0, 7.0], [7.0, 7.0]) == pytest.approx((1, 1, 1))


def test_ratio_interval_by_hand() -> None:
    # x = 1, 2, 3 and y = 2, 2, 2: X = Y = 2, s_x^2 = 1, s_y^2 = 0, s_xy = 0, so
    # Var(log R) = (1 / 3) / 2^2 = 1 / 12; interval exp(+-t_2 / sqrt(12)) around 1.
    ratio, low, high = bench.ratio_interval([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert ratio == 1
    assert low == pytest.approx(math.exp(-T_2 / math.sqrt(12)))
    assert high == pytest.approx(math.exp(T_2 / math.sqrt(12)))


def test_ratio_interval_uses_the_paired_covariance() -> None:
    # x = 1, 3 and y = 3, 1: X = Y = 2, s_x^2 = s_y^2 = 2, s_xy = -2, n = 2:
    # Var(log R) = 1 / 4 + 1 / 4 - 2 (-1) / 4 = 1 (0.5 if the covariance were ignored).
    ratio, low, high = bench.ratio_interval([1.0, 3.0], [3.0, 1.0])
    assert ratio == 1
    assert (low, high) == pytest.approx((math.exp(-T_1), math.exp(T_1)))
    # the same values positively paired: ratios 1 and 1, no uncertainty left
    assert bench.ratio_interval([1.0, 3.0], [1.0, 3.0]) == pytest.approx((1, 1, 1))


def test_ratio_interval_needs_paired_values() -> None:
    assert bench.ratio_interval([3.0], [2.0]) == (1.5, None, None)
    with pytest.raises(ValueError, match="same seeds"):
        bench.ratio_interval([1.0, 2.0], [1.0])


def test_pooled_ratios_take_the_better_mean_as_min() -> None:
    ratios = bench.pooled_ratios(
        {"global": [2.0, 2.0, 2.0], "segment": [4.0, 4.0, 4.0], "pooled": [1.0, 2.0, 3.0]}
    )
    best = ratios["pooled / min(global, segment)"]
    assert best == ratios["pooled / global"]
    assert best["baseline"] == "global"
    assert (best["ratio"], best["ci95_low"], best["ci95_high"]) == pytest.approx(
        (1, math.exp(-T_2 / math.sqrt(12)), math.exp(T_2 / math.sqrt(12)))
    )
    assert ratios["pooled / segment"]["ratio"] == 0.5
