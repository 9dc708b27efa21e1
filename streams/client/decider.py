"""The in-process decision: the service's own decide path, on this process's replicas.

Nothing here is a copy: a visit goes through `prepare_visit` (validation, context,
segment key) and `decide` (holdout, weights lookup, keyed-hash draw, decision id) of
`streams.pipeline.decide`, so that for the same visit and the same weights version the
decision is the one the service would publish. Sticky experiments are served from the
decisions this process made (a bounded LRU), since it has no exposure log to look in.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import orjson

from streams.client.errors import InvalidVisit
from streams.experiments import ExperimentRegistry
from streams.pipeline.decide import StickyAssignment, Visit, decide, prepare_visit
from streams.pipeline.events import Limits, RawEvent, RecentIds, Reject
from streams.pipeline.replica import WeightsReplica

CLIENT_TOPIC = "client"
"""The `topic` of the RawEvent a visit becomes (it only shows in messages)."""


class Decision(NamedTuple):
    """One decision, field for field the `decisions` contract (schemas/decisions.schema.json)."""

    decision_id: str
    event_id: str
    experiment_id: str
    visitor_id: str
    variant_id: str
    segment_key: str
    propensity: float
    source: str
    weights_version: int
    decided_at: str

    def as_document(self) -> dict[str, Any]:
        """The JSON document the `decisions` topic carries."""
        return self._asdict()


class StickyCache:
    """The variant last decided per (experiment, visitor) of sticky experiments, bounded (LRU).

    Entries are kept as plain (variant_id, segment_key) tuples: the garbage collector stops
    tracking a tuple of strings, not a named tuple, and a full cache of tracked entries (one
    more per decision) made every collection of the oldest generation walk all of them.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            msg = f"sticky capacity must be at least 1, got {capacity}"
            raise ValueError(msg)
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> StickyAssignment | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return StickyAssignment(*found)

    def put(self, key: tuple[str, str], assignment: StickyAssignment) -> None:
        self._entries[key] = (assignment.variant_id, assignment.segment_key)
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class LocalDecider:
    """Decides visits against a registry and weights replica (pure: no I/O, `now` passed in)."""

    def __init__(
        self,
        registry: ExperimentRegistry,
        weights: WeightsReplica,
        limits: Limits,
        *,
        sticky_capacity: int = 100_000,
        recent_capacity: int = 200_000,
    ) -> None:
        self.registry = registry
        self.weights = weights
        self.limits = limits
        self.sticky = StickyCache(sticky_capacity)
        self.recent = RecentIds(recent_capacity)
        self._offsets = itertools.count()

    def prepare(self, visit: Mapping[str, Any] | bytes, now: datetime) -> Visit:
        """Validate one visit as the service does; raise InvalidVisit with its reason."""
        raw = visit if isinstance(visit, bytes) else orjson.dumps(visit)
        # every call is a record of its own: an event_id seen before is a duplicate
        event = RawEvent(CLIENT_TOPIC, 0, next(self._offsets), None, raw)
        prepared = prepare_visit(event, self.registry, self.limits, now, self.recent)
        if isinstance(prepared, Reject):
            raise InvalidVisit.from_rejected(prepared.rejected)
        return prepared

    def known_sticky(self, visit: Visit) -> StickyAssignment | None:
        """The variant this process decided for the visitor, if the experiment is sticky."""
        if not visit.experiment.sticky:
            return None
        return self.sticky.get((visit.experiment.experiment_id, visit.visitor_id))

    def remember(self, visit: Visit, variant_id: str, segment: str) -> None:
        if visit.experiment.sticky:
            key = (visit.experiment.experiment_id, visit.visitor_id)
            self.sticky.put(key, StickyAssignment(variant_id, segment))

    def document(self, visit: Visit, now: datetime) -> dict[str, Any]:
        """The decision document of a prepared visit (what the `decisions` topic carries)."""
        sticky = self.known_sticky(visit)
        doc = decide(visit, self.weights, sticky, now)
        if sticky is None:
            self.remember(visit, doc["variant_id"], doc["segment_key"])
        return doc

    def decide(self, visit: Mapping[str, Any] | bytes, now: datetime) -> Decision:
        """The decision for one visit; InvalidVisit if the service would refuse it."""
        return Decision(**self.document(self.prepare(visit, now), now))
