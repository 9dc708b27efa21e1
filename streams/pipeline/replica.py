"""Every worker's replica of the compacted `allocations` topic: weights by (experiment, segment).

Deciding reads it per visit, so each entry keeps its cumulative weights precomputed.
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

    @property
    def probabilities(self) -> tuple[float, ...]:
        return self.weights.probabilities


def weights_entry(
    variant_ids: tuple[str, ...], probabilities: Mapping[str, float], source: str, version: int
) -> WeightsEntry:
    """Order and normalise published weights to the experiment's variants."""
    raw = [max(0.0, float(probabilities.get(v, 0.0))) for v in variant_ids]
    total = sum(raw)
    probs = tuple(p / total for p in raw) if total > 0 else uniform(len(variant_ids))
    return WeightsEntry(variant_ids, CumulativeWeights.from_probabilities(probs), source, version)


def uniform(k: int) -> tuple[float, ...]:
    return tuple(1.0 / k for _ in range(k))


@lru_cache(maxsize=1024)
def uniform_entry(variant_ids: tuple[str, ...]) -> WeightsEntry:
    """Equal weights, before any allocation exists (version 0)."""
    return weights_entry(variant_ids, {}, "uniform", 0)


def allocation_key(experiment_id: str, segment_key: str) -> str:
    """The Kafka key of an allocation (and of a segment delta): `experiment|segment`."""
    return f"{experiment_id}|{segment_key}"


class WeightsReplica:
    """Latest weights per (experiment, segment); a record never replaces a newer version."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], WeightsEntry] = {}

    def apply(self, doc: Mapping[str, Any]) -> bool:
        """Apply one `allocations` document; True when it changed the replica."""
        key = (str(doc["experiment_id"]), str(doc["segment_key"]))
        version = int(doc["version"])
        current = self._entries.get(key)
        if current is not None and current.version >= version:
            return False
        weights = doc["weights"]
        self._entries[key] = weights_entry(tuple(weights), weights, str(doc["source"]), version)
        return True

    def lookup(self, experiment_id: str, segment_key: str) -> tuple[WeightsEntry, bool] | None:
        """The segment's weights, else the experiment's global ones (second item False)."""
        entry = self._entries.get((experiment_id, segment_key))
        if entry is not None:
            return entry, True
        entry = self._entries.get((experiment_id, GLOBAL_SEGMENT))
        return (entry, False) if entry is not None else None

    def __len__(self) -> int:
        return len(self._entries)
