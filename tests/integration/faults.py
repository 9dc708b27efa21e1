"""Helpers of the fault tests: the scenarios themselves live in `streams.bench.faults` (the
package cannot import tests/, and `bandit-stream bench faults` runs the same code larger)."""

from __future__ import annotations

import pprint

from streams.bench.faults import Result

__all__ = ["assert_clean", "report"]


def report(result: Result) -> str:
    """What a failed scenario saw: its problems first, then its numbers."""
    facts = {k: v for k, v in result.facts.items() if k != "verdict"}
    return "\n".join(
        [
            f"scenario {result.name}: produced {result.produced:,}, faults {result.faults:,}, "
            f"lost {result.lost}, double-counted {result.duplicated}, "
            f"dead-lettered {dict(result.dead_lettered)}",
            *(f"PROBLEM: {p[:2000]}" for p in result.problems),
            pprint.pformat(facts, width=100, compact=True)[:6000],
        ]
    )


def assert_clean(result: Result) -> None:
    """No problem found, the counts exact."""
    assert not result.problems, report(result)
    assert (result.lost, result.duplicated) == (0, 0), report(result)
