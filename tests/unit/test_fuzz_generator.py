"""The fault generator of `bench faults` says what the service must answer, truthfully.

Every fault that breaks the contract must be refused by the contract's own decoder with a
reason the fault allows; every fault the stages refuse must pass the decoder (so that the
stage, not the decoder, is what the integration test exercises).
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streams.bench.faults import (
    BAD_SEGMENTS,
    SEGMENTS,
    Fuzzer,
    backlog,
    doc_item,
    interleave,
    visit_doc,
)
from streams.contracts import Rejected, decode_event, parse_timestamp
from streams.core.segments import parse_segment_key
from streams.topics import VISITS

pytestmark = pytest.mark.unit
STAGE_FAULTS = {
    "unknown_experiment", "stopped", "unknown_variant", "bad_segment", "unknown_decision",
    "contradicts", "unknown_visitor", "duplicate_exposure", "duplicate_conversion",
    "duplicate_visit",
}  # fmt: skip


def _generate(seed: int, n: int) -> tuple[Fuzzer, list]:
    rng = random.Random(seed)
    traffic = backlog(rng, "fuzz", 600, SEGMENTS[:20], "ok")
    visits = [doc_item(VISITS, visit_doc("fuzz", f"ok-visitor{i}", rng)) for i in range(200)]
    fuzzer = Fuzzer(rng, "fuzz", "fuzz-stopped", traffic, visits)
    return fuzzer, fuzzer.faults(n)


def _decode(item, now):
    return decode_event(
        item.base,
        item.value,
        max_bytes=65_536,
        now=now,
        max_future_skew=timedelta(seconds=300),
    )


def test_contract_faults_are_refused_by_the_decoder_with_an_allowed_reason() -> None:
    _, faults = _generate(17, 3_000)
    now = datetime.now(UTC)
    kinds = Counter(f.kind for f in faults)
    assert len(kinds) >= 20, kinds
    for f in faults:
        got = _decode(f, now)
        if not isinstance(got, Rejected) and _decided_out_of_range(f):
            continue  # the decoder checks occurred_at only: the track stage must refuse it
        if f.kind in STAGE_FAULTS:
            assert not isinstance(got, Rejected), (f.kind, got, f.value[:300])
        else:
            assert isinstance(got, Rejected), (f.kind, f.value[:300])
            assert got.reason.value in f.reasons, (f.kind, got, f.value[:300])


def _decided_out_of_range(item) -> bool:
    """A decision whose decided_at matches the schema but is no date (0000-01-01, or out of
    datetime's range once in UTC): the decoder checks only `occurred_at` that way."""
    if item.base != "decisions":
        return False
    try:
        parse_timestamp(orjson.loads(item.value)["decided_at"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return True
    return False


def test_records_stay_under_the_producer_limit() -> None:
    _, faults = _generate(3, 3_000)
    assert max(len(f.value or b"") + len(f.key or b"") for f in faults) < 900_000


def test_bad_segment_keys_are_not_segments() -> None:
    for key in BAD_SEGMENTS:
        with pytest.raises(ValueError):
            parse_segment_key(key)
    for key in SEGMENTS:
        parse_segment_key(key)


def test_duplicates_come_after_their_originals() -> None:
    fuzzer, faults = _generate(5, 2_000)
    items = interleave(random.Random(1), [*fuzzer.traffic.items, *fuzzer.visits, *faults])
    first: dict[str, bool] = {}
    for item in items:
        if item.group is not None and item.group not in first:
            first[item.group] = item.fault
    assert first and not any(first.values()), "an original first in every group"
    sizes = Counter(i.group for i in items if i.group)
    assert set(sizes.values()) == {2}
