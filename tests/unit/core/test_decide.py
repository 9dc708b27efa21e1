"""Decisions: inverse-CDF choice, keyed-hash uniforms, seeded sampling, holdout."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.decide import (
    DECISION_KEY,
    HOLDOUT_KEY,
    CumulativeWeights,
    choose,
    deterministic_uniform,
    in_holdout,
    sample,
)

pytestmark = pytest.mark.unit

probability_vectors = (
    st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1.0)), min_size=1, max_size=12)
    .filter(lambda raw: sum(raw) > 0)
    .map(lambda raw: [p / sum(raw) for p in raw])
)
unit_interval = st.floats(0.0, 1.0, exclude_max=True)


@given(probability_vectors, unit_interval)
def test_choose_returns_a_valid_index_with_its_own_weight(
    probabilities: list[float], u: float
) -> None:
    index, propensity = choose(probabilities, u)
    assert 0 <= index < len(probabilities)
    assert propensity == probabilities[index]
    assert propensity > 0  # a variant with weight zero is never shown


def _inverse_cdf_by_scan(probabilities: list[float], u: float) -> int:
    """The definition, by a linear scan: the first variant whose running total exceeds
    u * total; if round-off leaves none, the last variant with a positive weight."""
    total = sum(probabilities)  # left to right, as the running totals are
    running = 0.0
    for index, p in enumerate(probabilities):
        running += p
        if u * total < running:
            return index
    return max(i for i, p in enumerate(probabilities) if p > 0)


@given(probability_vectors, unit_interval)
def test_cached_weights_are_the_inverse_cdf(probabilities: list[float], u: float) -> None:
    # Against an independent reference (a scan, not the bisection of the cached sums), for
    # both entry points: a cache built from stale or misaligned sums fails here.
    expected = _inverse_cdf_by_scan(probabilities, u)
    cached = CumulativeWeights.from_probabilities(np.array(probabilities))
    assert cached.choose(u) == (expected, probabilities[expected])
    assert choose(probabilities, u) == (expected, probabilities[expected])


def test_choose_is_the_inverse_cdf() -> None:
    weights = [0.2, 0.0, 0.5, 0.3]
    assert choose(weights, 0.0) == (0, 0.2)
    assert choose(weights, 0.1999) == (0, 0.2)
    assert choose(weights, 0.2) == (2, 0.5)
    assert choose(weights, 0.6999) == (2, 0.5)
    assert choose(weights, 0.7) == (3, 0.3)
    assert choose(weights, math.nextafter(1.0, 0.0)) == (3, 0.3)


def test_round_off_at_the_end_picks_the_last_variant_that_can_be_shown() -> None:
    # Sums to 1 - 1e-16 in floating point; the last variant has weight 0.
    weights = [0.1] * 10 + [0.0]
    assert choose(weights, math.nextafter(1.0, 0.0))[0] == 9


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        choose([0.5, 0.5], 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        CumulativeWeights.from_probabilities([0.5, -0.1])
    with pytest.raises(ValueError, match="positive sum"):
        CumulativeWeights.from_probabilities([0.0, 0.0])


def test_deterministic_uniform_is_replayable_and_in_range() -> None:
    first = deterministic_uniform("event-42", 17)
    assert first == deterministic_uniform("event-42", 17)
    assert first != deterministic_uniform("event-42", 18)
    assert first != deterministic_uniform("event-4217")  # parts are separated
    assert first != deterministic_uniform("event-42", 17, key=b"other-key")
    draws = np.array([deterministic_uniform("e", i) for i in range(20_000)])
    assert draws.min() >= 0.0 and draws.max() < 1.0
    # Uniform mean 1/2 with sd sqrt(1/12 / n); 5 sd leaves no room for flakiness.
    assert abs(draws.mean() - 0.5) < 5 * math.sqrt(1 / 12 / draws.size)


def test_same_seed_gives_the_same_decisions() -> None:
    weights = [0.1, 0.6, 0.3]
    first = [sample(weights, rng) for rng in [np.random.default_rng(7)] for _ in range(200)]
    again = [sample(weights, rng) for rng in [np.random.default_rng(7)] for _ in range(200)]
    assert first == again


def test_sample_frequencies_match_the_weights() -> None:
    weights = np.array([0.1, 0.6, 0.3])
    rng = np.random.default_rng(11)
    n = 30_000
    counts = np.bincount([sample(weights, rng)[0] for _ in range(n)], minlength=3)
    # Each count is binomial(n, p): within 5 sd of n p.
    assert np.all(np.abs(counts - n * weights) < 5 * np.sqrt(n * weights * (1 - weights)))


def test_holdout_is_stable_and_has_the_right_share() -> None:
    share, n = 0.1, 40_000
    members = sum(in_holdout(f"visitor-{i}", "exp-1", share) for i in range(n))
    # Each visitor is in with probability `share` independently (a hash), so the
    # count is binomial(n, share): mean n share, sd sqrt(n share (1 - share)) = 60.
    # 4 sd: a false alarm has probability < 1e-4.
    assert abs(members - n * share) <= 4 * math.sqrt(n * share * (1 - share))
    assert in_holdout("visitor-1", "exp-1", share) == in_holdout("visitor-1", "exp-1", share)
    assert not any(in_holdout(f"v{i}", "exp-1", 0.0) for i in range(1_000))
    assert all(in_holdout(f"v{i}", "exp-1", 1.0) for i in range(1_000))
    with pytest.raises(ValueError, match="holdout share"):
        in_holdout("v", "e", 1.5)


def test_holdouts_of_different_experiments_are_independent() -> None:
    share, n = 0.2, 40_000
    both = sum(
        in_holdout(f"visitor-{i}", "exp-1", share) and in_holdout(f"visitor-{i}", "exp-2", share)
        for i in range(n)
    )
    # Independent membership: binomial(n, share^2), checked within 4 sd.
    p = share * share
    assert abs(both - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_deterministic_uniform_is_the_documented_keyed_hash() -> None:
    # what replays depend on: blake2b-64 keyed, parts joined by U+001F, top 53 bits
    for parts, key in [(("exp", "event-1"), DECISION_KEY), (("exp", "v-9"), HOLDOUT_KEY),
                       (("e", 17, "x"), b"k")]:  # fmt: skip
        text = "\x1f".join(map(str, parts)).encode()
        digest = hashlib.blake2b(text, digest_size=8, key=key).digest()
        expected = (int.from_bytes(digest, "big") >> 11) / 2.0**53
        assert deterministic_uniform(*parts, key=key) == expected
