"""Raw Kafka records, and the decode step every stage starts with."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from streams.contracts import (
    Rejected,
    RejectReason,
    dead_letter_record,
    decode_event_timed,
)


class RawEvent(NamedTuple):
    """One consumed record, before anything is trusted.

    A named tuple, not a frozen dataclass: one is built per record (and per in-process
    decision), and a frozen dataclass costs 2-3x as much to build."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Reject:
    """A record refused by a stage, with the reason that goes to the dead-letter topic."""

    event: RawEvent
    rejected: Rejected

    def dead_letter(self, now: datetime) -> dict[str, Any]:
        return dead_letter_record(
            source_topic=self.event.topic,
            partition=self.event.partition,
            offset=self.event.offset,
            key=self.event.key,
            raw=self.event.value,
            rejected=self.rejected,
            now=now,
        )


@dataclass(frozen=True)
class Limits:
    max_event_bytes: int
    max_future_skew: timedelta


def decode(
    contract: str, event: RawEvent, limits: Limits, now: datetime
) -> dict[str, Any] | Reject:
    """Decode and validate one record against its contract (never raises)."""
    result = decode_timed(contract, event, limits, now)
    return result if isinstance(result, Reject) else result[0]


def decode_timed(
    contract: str, event: RawEvent, limits: Limits, now: datetime
) -> tuple[dict[str, Any], datetime | None] | Reject:
    """`decode`, and the document's ``occurred_at`` parsed (see `decode_event_timed`)."""
    result = decode_event_timed(
        contract,
        event.value,
        max_bytes=limits.max_event_bytes,
        now=now,
        max_future_skew=limits.max_future_skew,
    )
    return Reject(event, result) if isinstance(result, Rejected) else result


def reject(event: RawEvent, reason: RejectReason, detail: str) -> Reject:
    return Reject(event, Rejected(reason, detail))


class RecentIds:
    """The last `capacity` event ids seen: catches a producer's duplicate sends cheaply.

    In memory and per worker on purpose: after a restart Kafka replays what was not
    committed, and those replays must be processed again, not refused as duplicates.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def seen_before(self, event_id: str, event: RawEvent) -> bool:
        """Record `event_id`; True if another record already carried it.

        The same record read again (same partition and offset: a rebalance seeking back)
        is a replay, not a duplicate.
        """
        where = (event.partition, event.offset)
        first = self._ids.get(event_id)
        if first is not None:
            return first != where
        self._ids[event_id] = where
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False
