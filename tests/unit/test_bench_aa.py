"""`bandit-stream bench aa`, small and seeded: the JSON shape, and the always-valid flags
stay under a bound derived from the binomial."""

from __future__ import annotations

import json

import pytest

from streams.cli.main import main

pytestmark = pytest.mark.unit


def test_bench_aa_json_and_false_positive_bound(capsys: pytest.CaptureFixture[str]) -> None:
    # 40 A/A runs of 6,000 visits in 12 looks (fixed seeds, one process).
    assert main(["bench", "aa", "--experiments", "40", "--power-runs", "2", "--visits",
                 "6000", "--batch", "500", "--jobs", "1", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert {"experiments", "false_positive_rate", "naive_false_positive_rate",
            "power_20pct_lift"} <= set(result)  # fmt: skip
    assert result["experiments"] == 40
    # If the family-wise false positive rate is at most α = 0.05, the number of A/A runs
    # with any decision-grade flag is stochastically below Binomial(40, 0.05): mean 2,
    # P(X ≥ 7) = 0.0034. So more than 6 of 40 (0.15) means the flags are not valid.
    assert result["false_positive_rate"] <= 6 / 40
    # the naive repeated z-test is the contrast: it flags far more often than α
    assert result["naive_false_positive_rate"] > result["false_positive_rate"]
    for key in ("false_positive_rate", "naive_false_positive_rate", "power_20pct_lift"):
        assert 0.0 <= result[key] <= 1.0
