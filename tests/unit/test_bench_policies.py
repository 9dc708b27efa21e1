"""`bench policies`: arguments, the JSON contract on stdout, the table."""

from __future__ import annotations

import argparse
import json

import pytest

from streams.bench import policies as bench

pytestmark = pytest.mark.unit

METRICS = {
    "regret_mean",
    "regret_sd",
    "best_share",
    "final_best_share",
    "visits_to_95",
    "conversions_vs_uniform",
}
RESET_METRICS = {"regret_mean", "regret_sd", "best_share", "min_probability"}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    args = _args()
    assert args.visits == 100_000
    assert args.steps == 1_000_000
    assert args.seeds == 5
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
    assert list(document) == ["scenarios"]
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


def test_unknown_scenario_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(_args("--scenario", "chaos")) == 2
    captured = capsys.readouterr()
    assert "unknown scenario" in captured.err
    assert captured.out == ""
