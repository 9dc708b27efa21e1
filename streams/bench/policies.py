"""`bandit-stream bench policies`: the allocation policies on simulated traffic.

Every policy sees the same visitors and the same random draws for a given seed
(common random numbers), so differences between policies are not luck of the
traffic. Seeds are fixed: 20241, 20242, ...

Contextual scenarios (`simulator.simulate`, `--visits` per run), columns per
scenario and policy (means over seeds unless said otherwise):

* regret_mean, regret_sd: cumulative expected regret against the per-segment
  oracle, sum over visits of (best rate in the segment - rate of the shown
  variant); sd across seeds.
* best_share: share of visits that got their segment's best variant.
* final_best_share: the same over the last 10 % of the visits (in `drift`:
  the share of the new best, i.e. whether the policy followed the change).
* visits_to_95: visit index at which segments holding half of the traffic
  first gave >= 95 % of their allocation to their best variant (mean over a
  segment's last 100 visits; after the change in `drift`); median across
  seeds, null if not reached.
* conversions_vs_uniform: relative gain in expected conversions over an equal
  split of the same visitors (+0.12 = +12 %).

`drift` adds rows with `discount` < 1 (share of evidence kept per simulated
minute, at the scenario's 10 visits per second).

`chapelle-li` (`simulator.simulate_resets`, `--steps` per run, one table per
`--delay`): Chapelle & Li's 10-arm benchmark with resets and feedback in
batches; rows: plain sampled Thompson sampling (the reference), the `global`
policy with its default floor, with no floor and with the old fixed floor;
min_probability is the smallest weight the policy gave any arm.
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

from streams.bench.simulator import (
    SCENARIOS,
    ResetScenario,
    policy_allocator,
    sampled_thompson,
    simulate,
    simulate_resets,
)
from streams.core.policies import make_policy

POLICIES = ("uniform", "global", "segment", "pooled")
FIRST_SEED = 20241
REFRESH_EVERY = 10
RESETS = "chapelle-li"
ALL_SCENARIOS = (*SCENARIOS, RESETS)
DRIFT_DISCOUNT = 0.97
"""Share of evidence kept per minute in the extra `drift` rows (half-life 23 min)."""

Row = tuple[str, dict[str, Any]]  # policy name ("thompson": sampled TS), settings
ROWS: dict[str, Row] = {
    **{name: (name, {}) for name in POLICIES},
    f"global discount={DRIFT_DISCOUNT}": ("global", {"discount": DRIFT_DISCOUNT}),
    f"pooled discount={DRIFT_DISCOUNT}": ("pooled", {"discount": DRIFT_DISCOUNT}),
    "thompson (sampled)": ("thompson", {}),
    "global floor=0": ("global", {"floor": 0.0}),
    "global fixed floor": ("global", {"floor_evidence": float("inf")}),
}
RESET_ROWS = ("thompson (sampled)", "global", "global floor=0", "global fixed floor")

Run = tuple[str, str, int]  # scenario label, row label, seed


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        message = f"must be a positive integer, got {text}"
        raise argparse.ArgumentTypeError(message)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--visits", type=_positive_int, default=100_000, help="visits per contextual run"
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=1_000_000,
        help=f"steps per {RESETS} run (default 10^6)",
    )
    parser.add_argument(
        "--delay",
        action="append",
        default=None,
        help=f"{RESETS}: steps between feedback deliveries; repeatable or comma list (default 100)",
    )
    parser.add_argument("--seeds", type=_positive_int, default=5, help="runs per policy")
    parser.add_argument(
        "--scenario",
        action="append",
        default=None,
        help=f"repeatable or comma list; default all of {', '.join(ALL_SCENARIOS)}",
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
        return list(ALL_SCENARIOS)
    names = [name.strip() for item in requested for name in item.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_SCENARIOS]
    if unknown:
        message = f"unknown scenario(s) {unknown}; choose from {list(ALL_SCENARIOS)}"
        raise ValueError(message)
    return list(dict.fromkeys(names))


def delays(requested: Sequence[str] | None) -> list[int]:
    """`--delay` values (default [100]), validated."""
    if not requested:
        return [100]
    values = []
    for item in requested:
        for text in item.split(","):
            if text.strip():
                values.append(_positive_int(text.strip()))
    return list(dict.fromkeys(values))


def rows_for(scenario: str) -> tuple[str, ...]:
    if scenario.startswith(RESETS):
        return RESET_ROWS
    if SCENARIOS[scenario]().drift_rates is not None:
        return (*POLICIES, f"global discount={DRIFT_DISCOUNT}", f"pooled discount={DRIFT_DISCOUNT}")
    return POLICIES


def _reset_label(delay: int) -> str:
    return f"{RESETS} delay={delay}"


def run_once(scenario: str, row: str, seed: int, visits: int, steps: int) -> dict[str, Any]:
    """One simulation, reduced to the numbers the table needs (cheap to pickle)."""
    policy_name, settings = ROWS[row]
    if scenario.startswith(RESETS):
        delay = int(scenario.rsplit("=", 1)[1])
        allocate = (
            sampled_thompson
            if policy_name == "thompson"
            else policy_allocator(make_policy(policy_name, settings))
        )
        outcome = simulate_resets(allocate, ResetScenario(delay=delay), steps, seed)
        return {
            "regret": outcome.regret,
            "best_share": outcome.best_share,
            "min_probability": outcome.min_probability,
        }
    result = simulate(
        make_policy(policy_name, settings),
        SCENARIOS[scenario](),
        visits,
        seed,
        refresh_every=REFRESH_EVERY,
    )
    return {
        "regret": result.regret,
        "best_share": result.best_share,
        "final_best_share": result.final_best_share,
        "visits_to_95": result.visits_to_95,
        "conversions_vs_uniform": result.conversions_vs_uniform,
    }


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, float | int | None]:
    regrets = np.array([run["regret"] for run in runs])
    summary: dict[str, float | int | None] = {
        "regret_mean": float(regrets.mean()),
        "regret_sd": float(regrets.std(ddof=1)) if regrets.size > 1 else 0.0,
        "best_share": float(np.mean([run["best_share"] for run in runs])),
    }
    if "min_probability" in runs[0]:
        smallest = [run["min_probability"] for run in runs]
        summary["min_probability"] = None if np.isnan(smallest).any() else float(min(smallest))
        return summary
    reached = [run["visits_to_95"] for run in runs]
    median = float(np.median([np.inf if r is None else r for r in reached]))
    summary["final_best_share"] = float(np.mean([run["final_best_share"] for run in runs]))
    summary["visits_to_95"] = None if np.isinf(median) else round(median)
    summary["conversions_vs_uniform"] = float(
        np.mean([run["conversions_vs_uniform"] for run in runs])
    )
    return summary


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
    runs: list[Run], visits: int, steps: int, jobs: int, progress: _Progress
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
            finish(run, run_once(*run, visits, steps))
        return results
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_once, *run, visits, steps): run for run in runs}
        for future in as_completed(futures):
            finish(futures[future], future.result())
    return results


def _contextual_lines(scenario: str, by_row: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for label, row in by_row.items():
        reached = "-" if row["visits_to_95"] is None else str(row["visits_to_95"])
        lines.append(
            f"{scenario:<14} {label:<20} {row['regret_mean']:>11.1f} {row['regret_sd']:>9.1f} "
            f"{row['best_share']:>10.3f} {row['final_best_share']:>10.3f} {reached:>12} "
            f"{row['conversions_vs_uniform']:>+15.3f}"
        )
    pooled = by_row.get("pooled")
    if pooled and "global" in by_row and "segment" in by_row:
        global_regret = by_row["global"]["regret_mean"]
        segment_regret = by_row["segment"]["regret_mean"]
        lines.append(
            f"{'':<14} pooled / global = {pooled['regret_mean'] / global_regret:.2f}, "
            f"pooled / segment = {pooled['regret_mean'] / segment_regret:.2f}, "
            f"pooled / min(global, segment) = "
            f"{pooled['regret_mean'] / min(global_regret, segment_regret):.2f}"
        )
    return lines


def _reset_lines(scenario: str, by_row: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        f"{scenario:<22} {'policy':<20} {'regret_mean':>11} {'regret_sd':>9} "
        f"{'best_share':>10} {'min_probability':>15}"
    ]
    for label, row in by_row.items():
        smallest = "-" if row["min_probability"] is None else f"{row['min_probability']:.2e}"
        lines.append(
            f"{'':<22} {label:<20} {row['regret_mean']:>11.1f} {row['regret_sd']:>9.1f} "
            f"{row['best_share']:>10.3f} {smallest:>15}"
        )
    reference = by_row.get("thompson (sampled)")
    if reference:
        ratios = ", ".join(
            f"{label} {row['regret_mean'] / reference['regret_mean']:.2f}"
            for label, row in by_row.items()
            if label != "thompson (sampled)"
        )
        lines.append(f"{'':<22} regret / sampled Thompson sampling: {ratios}")
    return lines


def _format_table(
    summary: dict[str, dict[str, dict[str, Any]]], visits: int, steps: int, seeds: int
) -> str:
    seed_range = f"{seeds} seeds ({FIRST_SEED}..{FIRST_SEED + seeds - 1})"
    lines = []
    contextual = {name: rows for name, rows in summary.items() if not name.startswith(RESETS)}
    if contextual:
        lines += [
            f"bench policies: {visits} visits x {seed_range},"
            f" weights recomputed per segment after every {REFRESH_EVERY} of its visits,"
            " posteriors updated every visit (every 500 in `delayed`)",
            "",
            f"{'scenario':<14} {'policy':<20} {'regret_mean':>11} {'regret_sd':>9} "
            f"{'best_share':>10} {'final_best':>10} {'visits_to_95':>12} {'conv_vs_uniform':>15}",
        ]
        for scenario, by_row in contextual.items():
            lines += [*_contextual_lines(scenario, by_row), ""]
    for scenario, by_row in summary.items():
        if scenario.startswith(RESETS):
            lines += [
                f"bench policies: {RESETS} (10 arms, rates ~ Beta(4, 4), an arm redrawn and "
                f"reset with probability 1e-3 per step), {steps} steps x {seed_range}",
                "",
                *_reset_lines(scenario, by_row),
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def main(args: argparse.Namespace) -> int:
    try:
        names = scenario_names(args.scenario)
        delay_values = delays(args.delay)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"bench policies: {exc}", file=sys.stderr)
        return 2
    labels = [
        label
        for name in names
        for label in ([_reset_label(d) for d in delay_values] if name == RESETS else [name])
    ]
    seeds = [FIRST_SEED + i for i in range(args.seeds)]
    runs = [(s, row, seed) for s in labels for row in rows_for(s) for seed in seeds]
    progress = _Progress(len(runs), sys.stderr)
    results = _execute(runs, args.visits, args.steps, max(1, args.jobs), progress)
    summary = {
        scenario: {
            row: summarise([results[(scenario, row, seed)] for seed in seeds])
            for row in rows_for(scenario)
        }
        for scenario in labels
    }
    if args.json:
        sys.stdout.write(json.dumps({"scenarios": summary}) + "\n")
    else:
        sys.stdout.write(_format_table(summary, args.visits, args.steps, args.seeds))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m streams.bench.policies", description=__doc__)
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
