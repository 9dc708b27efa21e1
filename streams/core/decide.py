"""Turning weights into a decision for one visitor.

Two ways to draw:

* `sample(probabilities, rng)`: with an injected numpy Generator (simulation,
  tests).
* `deterministic_uniform(event_id, weights_version)` + `choose(...)`: the
  pipeline's path. The uniform number is a keyed hash of the visit, so
  replaying the same event against the same weights gives the same variant and
  the same propensity, without storing any random state.

`CumulativeWeights` precomputes the cumulative sums once per weights version;
a cached decision is then a hash plus a `bisect` on a tuple of floats, which
is several times faster than any numpy call for the handful of variants an
experiment has.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from itertools import accumulate

import numpy as np

DECISION_KEY = b"bandit-stream/decision/v1"
"""Key of the decision hash; changing it reshuffles every replayed decision."""

HOLDOUT_KEY = b"bandit-stream/holdout/v1"
"""Separate key, so holdout membership is independent of the decisions."""

_SEPARATOR = "\x1f"
_TWO_POW_53 = float(2**53)


@lru_cache(maxsize=16)
def _keyed(key: bytes) -> blake2b:
    """A blake2b state that has absorbed `key`; copying it skips the key block per call."""
    return blake2b(digest_size=8, key=key)


def deterministic_uniform(*parts: str | int, key: bytes = DECISION_KEY) -> float:
    """A number in [0, 1) fixed by `parts` (e.g. event id, weights version).

    blake2b keyed with `key` over the parts joined by an ASCII unit separator;
    the top 53 bits give every representable double in [0, 1) on a 2^-53 grid.
    """
    hasher = _keyed(key).copy()
    hasher.update(_SEPARATOR.join(map(str, parts)).encode())
    return (int.from_bytes(hasher.digest(), "big") >> 11) / _TWO_POW_53


def in_holdout(visitor_id: str, experiment_id: str, share: float) -> bool:
    """Whether this visitor is in the experiment's uniform-allocation holdout.

    Stable per (experiment, visitor), independent across experiments; the
    holdout fraction converges to `share` (each visitor is in with
    probability `share`).
    """
    if not 0.0 <= share <= 1.0:
        message = f"holdout share must be in [0, 1], got {share!r}"
        raise ValueError(message)
    # u >= 0, so a share of 0 holds no one out: the hash is skipped, not the answer changed
    return share > 0.0 and deterministic_uniform(experiment_id, visitor_id, key=HOLDOUT_KEY) < share


def _pick(cumulative: Sequence[float], probabilities: Sequence[float], u: float) -> int:
    index = bisect_right(cumulative, u * cumulative[-1])
    if index < len(probabilities):
        return index
    # u * total rounded up to total: take the last variant that can be shown.
    for candidate in range(len(probabilities) - 1, -1, -1):
        if probabilities[candidate] > 0.0:
            return candidate
    message = "probabilities are all zero"
    raise ValueError(message)


def _check_u(u: float) -> None:
    if not 0.0 <= u < 1.0:
        message = f"u must be in [0, 1), got {u!r}"
        raise ValueError(message)


@dataclass(frozen=True)
class CumulativeWeights:
    """Probabilities and their running sums, ready for fast inverse-CDF draws."""

    probabilities: tuple[float, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def from_probabilities(cls, probabilities: Sequence[float] | np.ndarray) -> CumulativeWeights:
        values = tuple(float(p) for p in probabilities)
        if not values or any(not p >= 0.0 for p in values) or sum(values) <= 0.0:
            message = f"probabilities must be non-negative with a positive sum, got {values}"
            raise ValueError(message)
        return cls(values, tuple(accumulate(values)))

    def choose(self, u: float) -> tuple[int, float]:
        """(index, propensity) for a uniform `u` in [0, 1), by inverse CDF.

        `u` is scaled by the cumulative total, so weights that sum to
        1 +- round-off still select every variant with its own probability.
        """
        _check_u(u)
        index = _pick(self.cumulative, self.probabilities, u)
        return index, self.probabilities[index]


def choose(probabilities: Sequence[float] | np.ndarray, u: float) -> tuple[int, float]:
    """(index, propensity) for `u` in [0, 1); see `CumulativeWeights` to cache."""
    return CumulativeWeights.from_probabilities(probabilities).choose(u)


def sample(
    probabilities: Sequence[float] | np.ndarray, rng: np.random.Generator
) -> tuple[int, float]:
    """(index, propensity) drawn with the injected generator."""
    return choose(probabilities, float(rng.random()))
