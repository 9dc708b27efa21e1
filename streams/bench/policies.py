"""`bandit-stream bench policies`: the allocation policies on simulated traffic.

Every policy sees the same visitors and the same random draws for a given seed
(common random numbers), so differences between policies are not luck of the
traffic. Seeds are fixed: 20241, 20242, ...

Columns, per scenario and policy (means over seeds unless said otherwise):

* regret_mean, regret_sd: cumulative expected regret against the per-segment
  oracle, sum over visits of (best rate in the segment - rate of the shown
  variant); sd across seeds.
* best_share: share of visits that got their segment's best variant.
* visits_to_95: visit index at which segments holding half of the traffic
  first gave >= 95 % of their allocation to their best variant (mean over a
  segment's last 100 visits; after the change in `drift`); median across
  seeds, null if not reached.
* conversions_vs_uniform: relative gain in expected conversions over an equal
  split of the same visitors (+0.12 = +12 %).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np

from streams.core.policies import make_policy
from streams.core.simulator import SCENARIOS, simulate

POLICIES = ("uniform", "global", "segment", "pooled")
FIRST_SEED = 20241
REFRESH_EVERY = 10

Run = tuple[str, str, int]  # scenario, policy, seed


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        message = f"must be a positive integer, got {text}"
        raise argparse.ArgumentTypeError(message)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--visits", type=_positive_int, default=100_000, help="visits per run")
    parser.add_argument("--seeds", type=_positive_int, default=5, help="runs per policy")
    parser.add_argument(
        "--scenario",
        action="append",
        default=None,
        help=f"repeatable or comma list; default all of {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default: up to 2)",
    )


def scenario_names(requested: Sequence[str] | None) -> list[str]:
    """Requested scenarios in the given order (all when none), validated."""
    if not requested:
        return list(SCENARIOS)
    names = [name.strip() for item in requested for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        message = f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}"
        raise ValueError(message)
    return list(dict.fromkeys(names))


def run_once(scenario: str, policy: str, seed: int, visits: int) -> dict[str, Any]:
    """One simulation, reduced to the numbers the table needs (cheap to pickle)."""
    result = simulate(
        make_policy(policy), SCENARIOS[scenario](), visits, seed, refresh_every=REFRESH_EVERY
    )
    return {
        "regret": result.regret,
        "best_share": result.best_share,
        "visits_to_95": result.visits_to_95,
        "conversions_vs_uniform": result.conversions_vs_uniform,
    }


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    regrets = np.array([run["regret"] for run in runs])
    reached = [run["visits_to_95"] for run in runs]
    median = float(np.median([np.inf if r is None else r for r in reached]))
    return {
        "regret_mean": float(regrets.mean()),
        "regret_sd": float(regrets.std(ddof=1)) if regrets.size > 1 else 0.0,
        "best_share": float(np.mean([run["best_share"] for run in runs])),
        "visits_to_95": None if np.isinf(median) else round(median),
        "conversions_vs_uniform": float(np.mean([run["conversions_vs_uniform"] for run in runs])),
    }


class _Progress:
    """A bar redrawn in place on a terminal, else one line per finished scenario."""

    def __init__(self, total: int, stream: Any) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()

    def advance(self, finished_scenario: str | None) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        if self.interactive:
            filled = 30 * self.done // self.total
            bar = "#" * filled + "." * (30 - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} runs {elapsed:5.0f}s")
            if self.done == self.total:
                self.stream.write("\n")
        elif finished_scenario is not None:
            self.stream.write(
                f"bench policies: {finished_scenario} done "
                f"({self.done}/{self.total} runs, {elapsed:.0f}s)\n"
            )
        self.stream.flush()


def _execute(
    runs: list[Run], visits: int, jobs: int, progress: _Progress
) -> dict[Run, dict[str, Any]]:
    remaining = {scenario: 0 for scenario, _, _ in runs}
    for scenario, _, _ in runs:
        remaining[scenario] += 1
    results: dict[Run, dict[str, Any]] = {}

    def finish(run: Run, outcome: dict[str, Any]) -> None:
        results[run] = outcome
        remaining[run[0]] -= 1
        progress.advance(run[0] if remaining[run[0]] == 0 else None)

    if jobs == 1:
        for run in runs:
            finish(run, run_once(*run, visits))
        return results
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_once, *run, visits): run for run in runs}
        for future in as_completed(futures):
            finish(futures[future], future.result())
    return results


def _format_table(summary: dict[str, dict[str, dict[str, Any]]], visits: int, seeds: int) -> str:
    lines = [
        f"bench policies: {visits} visits x {seeds} seeds ({FIRST_SEED}..{FIRST_SEED + seeds - 1}),"
        f" weights recomputed per segment after every {REFRESH_EVERY} of its visits,"
        " posteriors updated every visit (every 500 in `delayed`)",
        "",
        f"{'scenario':<14} {'policy':<8} {'regret_mean':>11} {'regret_sd':>9} "
        f"{'best_share':>10} {'visits_to_95':>12} {'conv_vs_uniform':>15}",
    ]
    for scenario, by_policy in summary.items():
        for policy, row in by_policy.items():
            reached = "-" if row["visits_to_95"] is None else str(row["visits_to_95"])
            lines.append(
                f"{scenario:<14} {policy:<8} {row['regret_mean']:>11.1f} {row['regret_sd']:>9.1f} "
                f"{row['best_share']:>10.3f} {reached:>12} {row['conversions_vs_uniform']:>+15.3f}"
            )
        pooled = by_policy.get("pooled")
        if pooled and "global" in by_policy and "segment" in by_policy:
            global_regret = by_policy["global"]["regret_mean"]
            segment_regret = by_policy["segment"]["regret_mean"]
            lines.append(
                f"{'':<14} pooled / global = {pooled['regret_mean'] / global_regret:.2f}, "
                f"pooled / segment = {pooled['regret_mean'] / segment_regret:.2f}, "
                f"pooled / min(global, segment) = "
                f"{pooled['regret_mean'] / min(global_regret, segment_regret):.2f}"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(args: argparse.Namespace) -> int:
    try:
        scenarios = scenario_names(args.scenario)
    except ValueError as exc:
        print(f"bench policies: {exc}", file=sys.stderr)
        return 2
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    runs = [(s, p, seed) for s in scenarios for p in POLICIES for seed in seeds]
    progress = _Progress(len(runs), sys.stderr)
    results = _execute(runs, args.visits, max(1, args.jobs), progress)
    summary = {
        scenario: {
            policy: summarise([results[(scenario, policy, seed)] for seed in seeds])
            for policy in POLICIES
        }
        for scenario in scenarios
    }
    if args.json:
        sys.stdout.write(json.dumps({"scenarios": summary}) + "\n")
    else:
        sys.stdout.write(_format_table(summary, args.visits, args.seeds))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m streams.bench.policies", description=__doc__)
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
