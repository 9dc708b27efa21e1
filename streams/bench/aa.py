"""`bandit-stream bench aa`: are the analytics' decision-grade flags valid while it runs?

Each run simulates one experiment under the service's own adaptive allocation: the default
policy (`streams.core.policies.make_policy(DEFAULT_POLICY)`) with its pooling estimate,
weights recomputed per segment after every batch of traffic, every decision drawn with the
probability it logs, the logged propensities summed the way the state of record sums them
(Σ1/p, Σ1/p², Σy/p, Σy/p²). After every batch the snapshot goes through
`streams.analytics.report.build_insights` and the run records whether any decision-grade
flag appeared (a high performer, an underperformer or a decision-grade variant comparison)
and whether the naive repeated z-test would have flagged (a Benjamini–Hochberg q-value
below α for any of the same hypotheses, fixed-sample tests looked at every batch).

* A/A: every segment and variant converts at `BASE_RATE`, so every flag is false: the share
  of runs with any flag is the family-wise false positive rate over all looks.
* A/B: variant `b` converts 20 % more (relative) in every segment; power is the share of runs
  where a decision-grade comparison says b beats a. The same A/B runs under uniform
  allocation (`power_20pct_lift_uniform_allocation`) show how much of it the bandit's own
  allocation costs: once it starves the loser, the loser's exposures are what limit any
  inverse-propensity comparison.

Output (`--json`): {"experiments", "false_positive_rate", "naive_false_positive_rate",
"power_20pct_lift"} plus the settings. Seeds are fixed: `FIRST_SEED` + run index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np

from streams.bench import positive_int
from streams.core.snapshot import ExperimentSnapshot, SegmentSnapshot, VariantStats

FIRST_SEED: Final = 16_000
BASE_RATE: Final = 0.05
SHARES: Final = (0.4, 0.3, 0.2, 0.1)
VARIANTS: Final = ("a", "b")
LIFT: Final = 0.20
_START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Traffic:
    """Ground truth of one simulated experiment."""

    rates: np.ndarray  # segments x variants
    shares: np.ndarray  # per segment
    visits: int = 40_000
    batch: int = 1_000
    drop_variant: int | None = None  # exposures of this variant are lost ...
    drop_share: float = 0.0  # ... with this probability each (for SRM tests)


@dataclass(frozen=True, eq=False)
class State:
    """Cumulative sums per (segment, variant), as the state of record keeps them."""

    n: np.ndarray
    c: np.ndarray
    w: np.ndarray
    w2: np.ndarray
    y: np.ndarray
    y2: np.ndarray

    def snapshot(
        self, experiment_id: str, variants: tuple[str, ...], look: int
    ) -> ExperimentSnapshot:
        segments = {}
        for i in range(self.n.shape[0]):
            key = f"segment:{i}"
            segments[key] = SegmentSnapshot(
                key,
                {
                    v: VariantStats(
                        exposures=int(self.n[i, j]),
                        conversions=int(self.c[i, j]),
                        ipw_weight=float(self.w[i, j]),
                        ipw_weight_sq=float(self.w2[i, j]),
                        ipw_conversions=float(self.y[i, j]),
                        ipw_conversions_sq=float(self.y2[i, j]),
                    )
                    for j, v in enumerate(variants)
                },
            )
        return ExperimentSnapshot(
            experiment_id, variants, _START + timedelta(seconds=60 * look), segments
        )


def run(
    traffic: Traffic, rng: np.random.Generator, policy_name: str | None = None
) -> Iterator[State]:
    """The state after every batch of an adaptive run (weights recomputed between batches)."""
    from streams.core.policies import DEFAULT_POLICY, make_policy
    from streams.core.posterior import Counts, pooling_from_arrays

    policy = make_policy(policy_name or DEFAULT_POLICY)
    segments, variants = traffic.rates.shape
    zeros = np.zeros((segments, variants))
    n, c, w, w2, y, y2 = (zeros.copy() for _ in range(6))
    # learner's counts exclude nothing: it sees what reaches the state of record
    weights = np.full((segments, variants), 1.0 / variants)
    batches = traffic.visits // traffic.batch
    for _ in range(batches):
        per_segment = rng.multinomial(traffic.batch, traffic.shares)
        for i in range(segments):
            shown = rng.multinomial(per_segment[i], weights[i])
            if traffic.drop_variant is not None and traffic.drop_share > 0:
                j = traffic.drop_variant
                shown[j] -= rng.binomial(shown[j], traffic.drop_share)
            converted = rng.binomial(shown, traffic.rates[i])
            p = weights[i]
            n[i] += shown
            c[i] += converted
            w[i] += shown / p
            w2[i] += shown / (p * p)
            y[i] += converted / p
            y2[i] += converted / (p * p)
        yield State(n.copy(), c.copy(), w.copy(), w2.copy(), y.copy(), y2.copy())
        pooling = pooling_from_arrays(n, c) if policy.uses_pooling else None
        total = Counts(n.sum(0), c.sum(0))
        for i in range(segments):
            weights[i] = policy.weights(Counts(n[i], c[i]), total, pooling).probabilities


def _flags(documents: list[dict[str, Any]], alpha: float) -> tuple[bool, bool, bool]:
    """(any decision-grade flag, any naive flag, decision-grade 'b beats a')."""
    report = next(d["report"] for d in documents if d["kind"] == "lift_report")
    comparisons = list(report["global"]["comparisons"])
    naive = False
    flagged = False
    for segment in report["segments"]:
        comparisons += segment["comparisons"]
        for row in segment["variants"]:
            flagged |= row["flag"] is not None
            q = row["naive"]["q_value"]
            naive |= q is not None and q < alpha
    b_wins = False
    for comparison in comparisons:
        flagged |= comparison["decision_grade"]
        q = comparison["naive"]["q_value"]
        naive |= q is not None and q < alpha
        if comparison["decision_grade"]:
            lift = comparison["lift"] or 0.0
            b_wins |= (comparison["variant_id"], comparison["versus"], lift > 0) in {
                ("b", "a", True),
                ("a", "b", False),
            }
    return flagged, naive, b_wins


def one_run(
    seed: int, lifted: bool, visits: int, batch: int, alpha: float, policy: str | None = None
) -> tuple[bool, bool, bool]:
    from streams.analytics.report import build_insights

    rates = np.full((len(SHARES), len(VARIANTS)), BASE_RATE)
    if lifted:
        rates[:, 1] *= 1.0 + LIFT
    traffic = Traffic(rates, np.asarray(SHARES), visits=visits, batch=batch)
    rng = np.random.default_rng(seed)
    flagged = naive = b_wins = False
    for look, state in enumerate(run(traffic, rng, policy)):
        snapshot = state.snapshot("aa", VARIANTS, look)
        documents = build_insights("aa", VARIANTS, snapshot, (), now=snapshot.taken_at, alpha=alpha)
        f, n, b = _flags(documents, alpha)
        flagged, naive, b_wins = flagged or f, naive or n, b_wins or b
    return flagged, naive, b_wins


Task = tuple[list[int], bool, int, int, float, str | None]


def _chunk(task: Task) -> list[tuple[bool, bool, bool]]:
    seeds, lifted, visits, batch, alpha, policy = task
    return [one_run(seed, lifted, visits, batch, alpha, policy) for seed in seeds]


def measure(
    experiments: int,
    power_runs: int,
    visits: int = 40_000,
    batch: int = 1_000,
    alpha: float = 0.05,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run the A/A and A/B experiments; the JSON document `--json` prints."""
    aa_seeds = [FIRST_SEED + i for i in range(experiments)]
    ab_seeds = [FIRST_SEED + 1_000_000 + i for i in range(power_runs)]
    parts = jobs * 4
    tasks: list[Task] = [
        (aa_seeds[i::parts], False, visits, batch, alpha, None) for i in range(parts)
    ]
    tasks += [(ab_seeds[i::parts], True, visits, batch, alpha, None) for i in range(parts)]
    tasks += [(ab_seeds[i::parts], True, visits, batch, alpha, "uniform") for i in range(parts)]
    tasks = [t for t in tasks if t[0]]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(_chunk, tasks))
    else:
        results = [_chunk(task) for task in tasks]
    done = list(zip(tasks, results, strict=True))
    aa = [r for task, rs in done if not task[1] for r in rs]
    ab = [r for task, rs in done if task[1] and task[5] is None for r in rs]
    ab_uniform = [r for task, rs in done if task[5] == "uniform" for r in rs]
    return {
        "experiments": experiments,
        "false_positive_rate": float(np.mean([r[0] for r in aa])) if aa else None,
        "naive_false_positive_rate": float(np.mean([r[1] for r in aa])) if aa else None,
        "power_20pct_lift": float(np.mean([r[2] for r in ab])) if ab else None,
        "power_20pct_lift_uniform_allocation": (
            float(np.mean([r[2] for r in ab_uniform])) if ab_uniform else None
        ),
        "power_runs": power_runs,
        "visits": visits,
        "batch": batch,
        "looks": visits // batch,
        "alpha": alpha,
        "segments": len(SHARES),
        "variants": len(VARIANTS),
        "base_rate": BASE_RATE,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiments", type=positive_int, default=500, help="A/A runs")
    parser.add_argument(
        "--power-runs", type=positive_int, default=200, help="A/B runs with a 20 %% lift"
    )
    parser.add_argument("--visits", type=positive_int, default=40_000, help="visits per run")
    parser.add_argument("--batch", type=positive_int, default=1_000, help="visits per look")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--jobs", type=positive_int, default=min(2, os.cpu_count() or 1), help="processes"
    )


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    result = measure(
        args.experiments, args.power_runs, args.visits, args.batch, args.alpha, args.jobs
    )
    if args.json:
        print(json.dumps(result))
        return 0
    seconds = time.monotonic() - started
    print(
        f"A/A and A/B runs: {result['segments']} segments, {result['variants']} variants, "
        f"{result['visits']:,} visits in {result['looks']} looks, α = {result['alpha']} "
        f"({seconds:.0f} s)"
    )
    print(f"{'':<38}{'share of runs':>14}")
    print(f"{'A/A, any decision-grade flag':<38}{result['false_positive_rate']:>14.3f}"
          f"   (target ≤ {result['alpha']})")  # fmt: skip
    print(
        f"{'A/A, any naive repeated z-test flag':<38}{result['naive_false_positive_rate']:>14.3f}"
    )
    print(f"{'A/B +20 %, b found better (power)':<38}{result['power_20pct_lift']:>14.3f}")
    uniform = result["power_20pct_lift_uniform_allocation"]
    print(f"{'  the same, uniform allocation':<38}{uniform:>14.3f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bandit-stream bench aa")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
