"""`bench policies`: arguments, the JSON contract on stdout, the table."""

from __future__ import annotations

import argparse
import json

import pytest

from streams.bench import policies as bench

pytestmark = pytest.mark.unit

METRICS = {"regret_mean", "regret_sd", "best_share", "visits_to_95", "conversions_vs_uniform"}


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults() -> None:
    args = _args()
    assert args.visits == 100_000
    assert args.seeds == 5
    assert args.json is False
    assert bench.scenario_names(args.scenario) == [
        "heterogeneous",
        "homogeneous",
        "sparse",
        "drift",
        "delayed",
    ]


def test_scenarios_repeatable_or_comma_separated() -> None:
    args = _args("--scenario", "drift,sparse", "--scenario", "drift", "--scenario", "delayed")
    assert bench.scenario_names(args.scenario) == ["drift", "sparse", "delayed"]
    with pytest.raises(SystemExit):
        _args("--visits", "0")


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
    for by_policy in document["scenarios"].values():
        assert list(by_policy) == ["uniform", "global", "segment", "pooled"]
        for row in by_policy.values():
            assert set(row) == METRICS
            assert row["regret_sd"] >= 0
            assert 0 <= row["best_share"] <= 1
            assert row["visits_to_95"] is None or isinstance(row["visits_to_95"], int)


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
