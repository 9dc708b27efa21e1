"""`bandit-stream bench policies`: the allocation policies on simulated traffic.

Every policy sees the same visitors and the same random draws for a given seed
(common random numbers), so differences between policies are not luck of the
traffic. Seeds are fixed: `--first-seed` (default 20241), then the next
`--seeds` - 1 integers.

Contextual scenarios (`simulator.simulate`, `--visits` per run), columns per
scenario and policy (means over seeds unless said otherwise):

* regret_mean, regret_sd, regret_se: cumulative expected regret against the
  per-segment oracle, sum over visits of (best rate in the segment - rate of
  the shown variant); sd across seeds, and the standard error of the mean
  (sd / sqrt(seeds)); `regrets` lists the per-seed values (JSON only).
* best_share: share of visits that got their segment's best variant.
* final_best_share: the same over the last 10 % of the visits (in `drift`:
  the share of the new best, i.e. whether the policy followed the change).
* visits_to_95: visit index at which segments holding half of the traffic
  first gave >= 95 % of their allocation to their best variant (mean over a
  segment's last 100 visits; after the change in `drift`); median across
  seeds, null if not reached.
* conversions_vs_uniform: relative gain in expected conversions over an equal
  split of the same visitors (+0.12 = +12 %).

Below each scenario: pooled / global, pooled / segment and pooled /
min(global, segment), each with a 95 % interval over the seeds
(`ratio_interval`; JSON: `ratios`).

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
from scipy import stats

from streams.bench import positive_int
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--visits", type=positive_int, default=100_000, help="visits per contextual run"
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=1_000_000,
        help=f"steps per {RESETS} run (default 10^6)",
    )
    parser.add_argument(
        "--delay",
        action="append",
        default=None,
        help=f"{RESETS}: steps between feedback deliveries; repeatable or comma list (default 100)",
    )
    parser.add_argument("--seeds", type=positive_int, default=5, help="runs per policy")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=FIRST_SEED,
        help=f"first of the consecutive seeds (default {FIRST_SEED})",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=None,
        help=f"repeatable or comma list; default all of {', '.join(ALL_SCENARIOS)}",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--jobs",
        type=positive_int,
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
                values.append(positive_int(text.strip()))
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


def standard_error(values: Sequence[float]) -> float | None:
    """Standard error of the mean, sd (n - 1 denominator) / sqrt(n); None for one value."""
    if len(values) < 2:
        return None
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float], level: float = 0.95
) -> tuple[float, float | None, float | None]:
    """Ratio of means mean(x) / mean(y) of paired per-seed values, with its interval.

    Seed i gives both x_i and y_i (common random numbers), so the two means are
    correlated and the interval must use the paired covariance. Delta method on
    the log ratio: with X, Y the means over n seeds,

        log(X / Y) ~ log(E x / E y) + (X - E x) / E x - (Y - E y) / E y,

    so Var(log(X / Y)) ~ Var(X) / (E x)^2 + Var(Y) / (E y)^2 - 2 Cov(X, Y) / (E x E y)
    with Var(X) = s_x^2 / n, Var(Y) = s_y^2 / n, Cov(X, Y) = s_xy / n (sample
    variances and covariance over seeds, n - 1 denominators). That equals
    s_d^2 / n where d_i = x_i / X - y_i / Y, the per-seed paired difference of
    relative values: a shared seed that is hard for both policies cancels.
    The interval is exp(log(X / Y) +- t * s_d / sqrt(n)) with t the Student-t
    quantile on n - 1 degrees of freedom (s_d is estimated from n seeds);
    it is never negative and is not symmetric around the ratio. Identical
    per-seed ratios x_i / y_i give a zero-width interval. The approximation is
    first order and assumes near-normal means: with few seeds and skewed
    regrets (one bad seed) read the interval as indicative. Returns
    (ratio, low, high); low and high are None for fewer than 2 seeds.
    """
    x = np.asarray(numerator, dtype=float)
    y = np.asarray(denominator, dtype=float)
    if x.shape != y.shape:
        message = f"paired values need the same seeds, got {x.size} and {y.size}"
        raise ValueError(message)
    ratio = float(x.mean() / y.mean())
    if x.size < 2:
        return ratio, None, None
    differences = x / x.mean() - y / y.mean()
    half_width = float(
        stats.t.ppf(0.5 + level / 2, x.size - 1) * differences.std(ddof=1) / np.sqrt(x.size)
    )
    return ratio, ratio * float(np.exp(-half_width)), ratio * float(np.exp(half_width))


def pooled_ratios(regrets: dict[str, Sequence[float]]) -> dict[str, dict[str, Any]]:
    """`pooled` regret over `global`, `segment` and the better of the two, per-seed paired.

    `regrets` maps a row label to its per-seed regrets, in the same seed order.
    min(global, segment) is the policy with the smaller *mean* regret (named in
    `baseline`); the interval is for pooled over that policy and does not
    account for the choice, which matters only when the two means are close.
    """
    better = min(("global", "segment"), key=lambda name: float(np.mean(regrets[name])))
    baselines = {"global": "global", "segment": "segment", "min(global, segment)": better}
    ratios = {}
    for label, baseline in baselines.items():
        ratio, low, high = ratio_interval(regrets["pooled"], regrets[baseline])
        ratios[f"pooled / {label}"] = {
            "baseline": baseline,
            "ratio": ratio,
            "ci95_low": low,
            "ci95_high": high,
        }
    return ratios


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    regrets = [float(run["regret"]) for run in runs]
    summary: dict[str, Any] = {
        "regret_mean": float(np.mean(regrets)),
        "regret_sd": float(np.std(regrets, ddof=1)) if len(regrets) > 1 else 0.0,
        "regret_se": standard_error(regrets),
        "regrets": regrets,
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


def _interval(ratio: dict[str, Any]) -> str:
    if ratio["ci95_low"] is None:
        return f"{ratio['ratio']:.2f}"
    return f"{ratio['ratio']:.2f} [{ratio['ci95_low']:.2f}, {ratio['ci95_high']:.2f}]"


def _se(row: dict[str, Any]) -> str:
    return "-" if row["regret_se"] is None else f"{row['regret_se']:.1f}"


def _contextual_lines(
    scenario: str, by_row: dict[str, dict[str, Any]], ratios: dict[str, dict[str, Any]] | None
) -> list[str]:
    lines = []
    for label, row in by_row.items():
        reached = "-" if row["visits_to_95"] is None else str(row["visits_to_95"])
        lines.append(
            f"{scenario:<14} {label:<20} {row['regret_mean']:>11.1f} {row['regret_sd']:>9.1f} "
            f"{_se(row):>9} {row['best_share']:>10.3f} {row['final_best_share']:>10.3f} "
            f"{reached:>12} {row['conversions_vs_uniform']:>+15.3f}"
        )
    if ratios:
        best = ratios["pooled / min(global, segment)"]
        lines.append(
            f"{'':<14} pooled / global = {_interval(ratios['pooled / global'])}, "
            f"pooled / segment = {_interval(ratios['pooled / segment'])}, "
            f"pooled / min(global, segment) = {_interval(best)} (min: {best['baseline']})"
        )
    return lines


def _reset_lines(scenario: str, by_row: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        f"{scenario:<22} {'policy':<20} {'regret_mean':>11} {'regret_sd':>9} "
        f"{'regret_se':>9} {'best_share':>10} {'min_probability':>15}"
    ]
    for label, row in by_row.items():
        smallest = "-" if row["min_probability"] is None else f"{row['min_probability']:.2e}"
        lines.append(
            f"{'':<22} {label:<20} {row['regret_mean']:>11.1f} {row['regret_sd']:>9.1f} "
            f"{_se(row):>9} {row['best_share']:>10.3f} {smallest:>15}"
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
    summary: dict[str, dict[str, dict[str, Any]]],
    ratios: dict[str, dict[str, dict[str, Any]]],
    visits: int,
    steps: int,
    seeds: Sequence[int],
) -> str:
    seed_range = f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]})"
    lines = []
    contextual = {name: rows for name, rows in summary.items() if not name.startswith(RESETS)}
    if contextual:
        lines += [
            f"bench policies: {visits} visits x {seed_range},"
            f" weights recomputed per segment after every {REFRESH_EVERY} of its visits,"
            " posteriors updated every visit (every 500 in `delayed`)",
            "",
            f"{'scenario':<14} {'policy':<20} {'regret_mean':>11} {'regret_sd':>9} "
            f"{'regret_se':>9} {'best_share':>10} {'final_best':>10} {'visits_to_95':>12} "
            f"{'conv_vs_uniform':>15}",
        ]
        for scenario, by_row in contextual.items():
            lines += [*_contextual_lines(scenario, by_row, ratios.get(scenario)), ""]
        if ratios:
            lines += [
                "ratios of mean regrets with 95 % intervals over the seeds, paired (delta method"
                " on the log ratio, Student t); min = the policy with the smaller mean regret,"
                " a choice the interval does not cover",
                "",
            ]
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
    seeds = [args.first_seed + i for i in range(args.seeds)]
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
    ratios = {
        scenario: pooled_ratios({row: summary[scenario][row]["regrets"] for row in POLICIES})
        for scenario in labels
        if not scenario.startswith(RESETS)
    }
    if args.json:
        document = {"scenarios": summary, "ratios": ratios, "seeds": seeds}
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        sys.stdout.write(_format_table(summary, ratios, args.visits, args.steps, seeds))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="python -m streams.bench.policies", description=__doc__)
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
