"""`bench pipeline --json` end to end with tiny sizes: the shape of its answer, no timings.

Performance lives in the benchmark, not in tests: nothing here compares a number with a
threshold, only that every figure is there, positive and finite, and the percentiles ordered.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import Services
from tests.integration.workers import REPO

pytestmark = pytest.mark.integration

TOP_LEVEL = (
    "pipeline_visits_per_s",
    "pipeline_eps",
    "baseline_eps",
    "faust_reference_eps",
    "ratio_to_faust_reference",
    "offered_visits_per_s",
)


def _positive_finite(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (math.isfinite(value) and value > 0)
    )


def test_bench_pipeline_prints_one_complete_json_object(services: Services) -> None:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": services.bootstrap_servers,
        "DATABASE_URL": services.database_url,
        "BANDIT_PARTITIONS": "4",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.bench.pipeline",
            "--json",
            "--visits",
            "600",
            "--rate",
            "100",
            "--duration",
            "3",
            "--client-visits",
            "500",
            "--http-rate",
            "100",
            "--http-duration",
            "2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold one JSON object and nothing else:\n{done.stdout}"
    result = json.loads(lines[0])

    assert set(result) == {*TOP_LEVEL, "latency_ms", "client", "http"}
    for key in TOP_LEVEL:
        assert _positive_finite(result[key]), (key, result[key])
    assert set(result["latency_ms"]) == {"uncommitted", "committed"}
    for reader, pct in result["latency_ms"].items():
        assert set(pct) == {"p50", "p95", "p99"}, reader
        assert all(_positive_finite(v) for v in pct.values()), (reader, pct)
        assert pct["p50"] <= pct["p95"] <= pct["p99"], (reader, pct)
    assert set(result["client"]) == {"p50_us", "p99_us"}
    assert set(result["http"]) == {"p50_ms", "p99_ms", "requests_per_s"}
    for path in ("client", "http"):
        assert all(_positive_finite(v) for v in result[path].values()), (path, result[path])
    assert result["client"]["p50_us"] <= result["client"]["p99_us"]
    assert result["http"]["p50_ms"] <= result["http"]["p99_ms"]
    assert result["ratio_to_faust_reference"] == pytest.approx(
        result["pipeline_eps"] / result["faust_reference_eps"], rel=0.01
    )
