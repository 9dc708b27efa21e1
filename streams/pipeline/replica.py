"""Every worker's replica of the compacted `allocations` topic: weights by (experiment, segment).

Deciding reads it per visit, so each entry keeps its cumulative weights precomputed. Each
key keeps the versions of the last few minutes with the time they were published, so that a
visit is decided with the weights that were current when the visit reached Kafka: a visit
replayed after a crash or a rebalance gets the same weights, hence the same decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from streams.core.decide import CumulativeWeights

GLOBAL_SEGMENT = "*"


@dataclass(frozen=True)
class WeightsEntry:
    """One published allocation: probabilities per variant, in the experiment's order."""

    variant_ids: tuple[str, ...]
    weights: CumulativeWeights
    source: str
    version: int
    published_ms: int = 0

    @property
    def probabilities(self) -> tuple[float, ...]:
        return self.weights.probabilities


def weights_entry(
    variant_ids: tuple[str, ...],
    probabilities: Mapping[str, float],
    source: str,
    version: int,
    published_ms: int = 0,
) -> WeightsEntry:
    """Order and normalise published weights to the experiment's variants."""
    raw = [max(0.0, float(probabilities.get(v, 0.0))) for v in variant_ids]
    total = sum(raw)
    probs = tuple(p / total for p in raw) if total > 0 else uniform(len(variant_ids))
    return WeightsEntry(
        variant_ids, CumulativeWeights.from_probabilities(probs), source, version, published_ms
    )


def uniform(k: int) -> tuple[float, ...]:
    return tuple(1.0 / k for _ in range(k))


@lru_cache(maxsize=1024)
def uniform_entry(variant_ids: tuple[str, ...]) -> WeightsEntry:
    """Equal weights, before any allocation exists (version 0)."""
    return weights_entry(variant_ids, {}, "uniform", 0)


def allocation_key(experiment_id: str, segment_key: str) -> str:
    """The Kafka key of an allocation (and of a segment delta): `experiment|segment`."""
    return f"{experiment_id}|{segment_key}"


HISTORY_MS = 10 * 60 * 1000
"""How far back a key's versions are kept: a visit replayed later than this after its first
decision is decided with the oldest weights kept (it may then differ)."""


class WeightsReplica:
    """Weights per (experiment, segment), with their recent versions.

    `lookup(…, at_ms)` gives the newest version published at or before `at_ms` (the visit's
    Kafka timestamp; the oldest kept when none was), without `at_ms` the newest: versions
    never go back, and a replayed visit meets the weights its first decision met.
    """

    def __init__(self) -> None:
        self._history: dict[tuple[str, str], list[WeightsEntry]] = {}

    def apply(self, doc: Mapping[str, Any], published_ms: int = 0) -> bool:
        """Apply one `allocations` document; True when it is a new version of its key."""
        key = (str(doc["experiment_id"]), str(doc["segment_key"]))
        version = int(doc["version"])
        history = self._history.setdefault(key, [])
        if any(e.version == version for e in history):
            return False
        weights = doc["weights"]
        entry = weights_entry(tuple(weights), weights, str(doc["source"]), version, published_ms)
        history.append(entry)
        history.sort(key=lambda e: e.version)
        _prune(history)
        return True

    def lookup(
        self, experiment_id: str, segment_key: str, at_ms: int | None = None
    ) -> tuple[WeightsEntry, bool] | None:
        """The segment's weights, else the experiment's global ones (second item False)."""
        entry = self._at((experiment_id, segment_key), at_ms)
        if entry is not None:
            return entry, True
        entry = self._at((experiment_id, GLOBAL_SEGMENT), at_ms)
        return (entry, False) if entry is not None else None

    def _at(self, key: tuple[str, str], at_ms: int | None) -> WeightsEntry | None:
        history = self._history.get(key)
        if not history:
            return None
        if at_ms is None:
            return history[-1]
        current = [e for e in history if e.published_ms <= at_ms]
        # none yet at that time (a producer's clock far behind): the oldest kept, not none
        return max(current, key=lambda e: e.version) if current else history[0]

    def __len__(self) -> int:
        return len(self._history)


def _prune(history: list[WeightsEntry]) -> None:
    """Keep the versions of the last HISTORY_MS, and the one that was current before them."""
    newest = max(e.published_ms for e in history)
    old = [e for e in history if e.published_ms <= newest - HISTORY_MS]
    if len(old) > 1:
        keep = max(old, key=lambda e: e.version)
        history[:] = [e for e in history if e not in old or e is keep]
