"""The track stage, pure: decisions, exposures and conversions → records, attribution, deltas.

On the visitor partition. What the stage trusts comes from the decision of record: an
exposure says which decision it shows, and the segment, variant and propensity counted are
the decision's (an exposure that contradicts its decision is refused). A conversion goes to
the visitor's latest exposure whose attribution window contains it: the exposure's first
conversion counts for learning, later ones are repeats (their value is kept). What cannot be
decided yet waits (see `Waiting`) and is re-read when what it waits for arrives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from streams.contracts import RejectReason, parse_timestamp
from streams.core.segments import parse_segment_key
from streams.core.snapshot import VariantStats
from streams.experiments import ExperimentRegistry
from streams.pipeline.events import Limits, RawEvent, Reject, decode, reject

IPW_SOURCES = frozenset({"segment", "pooled", "global", "uniform", "burn_in", "holdout"})
"""Decisions drawn at random with a logged propensity (sticky ones repeat an earlier draw)."""


@dataclass(frozen=True)
class DecisionRecord:
    """A decision of record (decision_log)."""

    decision_id: str
    experiment_id: str
    visitor_id: str
    variant_id: str
    segment_key: str
    propensity: float
    weights_version: int
    source: str
    decided_at: datetime


@dataclass(frozen=True)
class Exposure:
    event: RawEvent
    event_id: str
    experiment_id: str
    visitor_id: str
    variant_id: str
    decision_id: str
    segment_key: str
    occurred_at: datetime
    window: timedelta


@dataclass(frozen=True)
class Conversion:
    event: RawEvent
    event_id: str
    experiment_id: str
    visitor_id: str
    occurred_at: datetime
    value: float | None
    window: timedelta
    expired: bool = False
    """Its wait is over: attribute it to what is known now, or refuse it."""


@dataclass
class ExposureRecord:
    """An exposure as stored (exposure_log), the candidate a conversion attributes to."""

    decision_id: str
    experiment_id: str
    variant_id: str
    segment_key: str
    exposed_at: datetime
    propensity: float
    source: str
    conversion_event_id: str | None


@dataclass(frozen=True)
class Attributed:
    conversion: Conversion
    exposure: ExposureRecord
    repeat: bool


@dataclass(frozen=True)
class Waiting:
    """A record that cannot be decided yet, and what it waits for."""

    event: RawEvent
    waiting_for: str  # "exposure" | "decision" | "experiment"
    event_id: str
    experiment_id: str
    visitor_id: str
    decision_id: str | None
    value: float | None
    occurred_at: datetime
    expires_at: datetime


@dataclass
class Classified:
    decisions: list[DecisionRecord] = field(default_factory=list)
    exposures: list[Exposure] = field(default_factory=list)
    conversions: list[Conversion] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


@dataclass(frozen=True)
class Topics:
    decisions: str
    exposures: str
    conversions: str


@dataclass(frozen=True)
class Waits:
    """How long what waits may wait."""

    grace: timedelta
    unknown_experiment: timedelta


def classify(
    events: Sequence[RawEvent],
    topics: Topics,
    registry: ExperimentRegistry,
    limits: Limits,
    waits: Waits,
    now: datetime,
    *,
    expired: bool = False,
) -> Classified:
    """Validate a mixed batch (told apart by topic).

    `expired`: these records' wait is over. What would wait again is returned in `waiting`
    (to be kept as expired) *and* refused with a reason.
    """
    out = Classified()
    for event in events:
        if event.topic == topics.decisions:
            doc = decode("decisions", event, limits, now)
            if isinstance(doc, Reject):
                out.rejects.append(doc)
                continue
            try:
                out.decisions.append(_decision(doc))
            except ValueError as exc:  # the contract checks the shape, not the calendar
                out.rejects.append(
                    reject(event, RejectReason.SCHEMA_VIOLATION, f"field 'decided_at': {exc}")
                )
            continue
        contract = "exposures" if event.topic == topics.exposures else "conversions"
        doc = decode(contract, event, limits, now)
        if isinstance(doc, Reject):
            out.rejects.append(doc)
            continue
        occurred_at = parse_timestamp(doc["occurred_at"])
        experiment = registry.get(doc["experiment_id"])
        if experiment is None:
            wait = _waiting(event, doc, "experiment", occurred_at, now + waits.unknown_experiment)
            out.waiting.append(wait)
            if expired:
                out.rejects.append(
                    reject(
                        event,
                        RejectReason.UNKNOWN_EXPERIMENT,
                        f"experiment {doc['experiment_id']!r} is not defined (waited "
                        f"{waits.unknown_experiment.total_seconds():,.0f} s for it); create "
                        "it with `bandit-stream experiment create` before sending its events",
                    )
                )
            continue
        if experiment.status == "stopped":
            out.rejects.append(
                reject(
                    event,
                    RejectReason.EXPERIMENT_NOT_RUNNING,
                    f"experiment {doc['experiment_id']!r} is stopped; its counts are final",
                )
            )
            continue
        window = timedelta(seconds=experiment.attribution_window_seconds)
        if contract == "exposures":
            refused = _refuse_exposure(event, doc, experiment.variant_ids)
            if refused is not None:
                out.rejects.append(refused)
                continue
            out.exposures.append(
                Exposure(
                    event,
                    doc["event_id"],
                    doc["experiment_id"],
                    doc["visitor_id"],
                    doc["variant_id"],
                    doc["decision_id"],
                    doc["segment_key"],
                    occurred_at,
                    window,
                )
            )
            continue
        value = doc.get("value")  # the contract bounds it: 0 <= value <= 1e12
        out.conversions.append(
            Conversion(
                event,
                doc["event_id"],
                doc["experiment_id"],
                doc["visitor_id"],
                occurred_at,
                float(value) if value is not None else None,
                window,
                expired,
            )
        )
    return out


def _decision(doc: Mapping[str, Any]) -> DecisionRecord:
    return DecisionRecord(
        decision_id=doc["decision_id"],
        experiment_id=doc["experiment_id"],
        visitor_id=doc["visitor_id"],
        variant_id=doc["variant_id"],
        segment_key=doc["segment_key"],
        propensity=float(doc["propensity"]),
        weights_version=int(doc["weights_version"]),
        source=doc["source"],
        decided_at=parse_timestamp(doc["decided_at"]),
    )


def _waiting(
    event: RawEvent,
    doc: Mapping[str, Any],
    waiting_for: str,
    occurred_at: datetime,
    expires_at: datetime,
) -> Waiting:
    value = doc.get("value")
    return Waiting(
        event=event,
        waiting_for=waiting_for,
        event_id=doc["event_id"],
        experiment_id=doc["experiment_id"],
        visitor_id=doc["visitor_id"],
        decision_id=doc.get("decision_id"),
        value=float(value) if isinstance(value, int | float) else None,
        occurred_at=occurred_at,
        expires_at=expires_at,
    )


def _refuse_exposure(
    event: RawEvent, doc: Mapping[str, Any], variant_ids: tuple[str, ...]
) -> Reject | None:
    if doc["variant_id"] not in variant_ids:
        return reject(
            event,
            RejectReason.UNKNOWN_VARIANT,
            f"variant {doc['variant_id']!r} is not one of experiment "
            f"{doc['experiment_id']!r}'s variants {list(variant_ids)}",
        )
    key = doc["segment_key"]
    try:
        parse_segment_key(key)
    except ValueError:
        return reject(
            event,
            RejectReason.INVALID_SEGMENT_KEY,
            f"segment_key {key!r} is not a segment: copy the segment_key of the decision "
            "this exposure shows",
        )
    return None


def join_decisions(
    exposures: Sequence[Exposure],
    decisions: Mapping[str, DecisionRecord],
    grace: timedelta,
    *,
    expired: bool = False,
) -> tuple[list[tuple[Exposure, DecisionRecord]], list[Waiting], list[Reject]]:
    """Each exposure with its decision of record; without one yet, it waits for it.

    `expired`: the wait is over; an exposure still without its decision is also refused.
    """
    matched: list[tuple[Exposure, DecisionRecord]] = []
    waiting: list[Waiting] = []
    rejects: list[Reject] = []
    for e in exposures:
        d = decisions.get(e.decision_id)
        if d is None:
            waiting.append(
                Waiting(
                    e.event,
                    "decision",
                    e.event_id,
                    e.experiment_id,
                    e.visitor_id,
                    e.decision_id,
                    None,
                    e.occurred_at,
                    e.occurred_at + e.window + grace,
                )
            )
            if expired:
                rejects.append(
                    reject(
                        e.event,
                        RejectReason.UNKNOWN_DECISION,
                        f"exposure {e.event_id!r} names decision {e.decision_id!r}, which "
                        "never arrived on the decisions topic; an exposure must show a "
                        "decision the service (or its client library) made",
                    )
                )
            continue
        clash = [
            f"{name} {mine!r} (the decision says {theirs!r})"
            for name, mine, theirs in (
                ("experiment_id", e.experiment_id, d.experiment_id),
                ("visitor_id", e.visitor_id, d.visitor_id),
                ("variant_id", e.variant_id, d.variant_id),
                ("segment_key", e.segment_key, d.segment_key),
            )
            if mine != theirs
        ]
        if clash:
            rejects.append(
                reject(
                    e.event,
                    RejectReason.CONTRADICTS_DECISION,
                    f"exposure {e.event_id!r} contradicts decision {e.decision_id!r}: "
                    + ", ".join(clash)
                    + "; an exposure must show the variant its decision chose",
                )
            )
            continue
        matched.append((e, d))
    return matched, waiting, rejects


def dedupe_exposures(
    matched: Sequence[tuple[Exposure, DecisionRecord]],
) -> tuple[list[tuple[Exposure, DecisionRecord]], list[Reject]]:
    """Within one batch, the first exposure of a decision counts; later ones are duplicates."""
    first: dict[str, tuple[Exposure, DecisionRecord]] = {}
    rejects: list[Reject] = []
    for pair in matched:
        if pair[0].decision_id in first:
            rejects.append(duplicate_exposure(pair[0]))
        else:
            first[pair[0].decision_id] = pair
    return list(first.values()), rejects


def duplicate_exposure(exposure: Exposure) -> Reject:
    return reject(
        exposure.event,
        RejectReason.DUPLICATE_EVENT,
        f"decision {exposure.decision_id!r} was already exposed (event "
        f"{exposure.event_id!r}); each decision's exposure counts once",
    )


def dedupe_conversions(
    conversions: Sequence[Conversion], counted: Iterable[str]
) -> tuple[list[Conversion], list[Reject]]:
    """Drop conversions whose event_id was counted before or earlier in the batch."""
    seen = set(counted)
    kept: list[Conversion] = []
    rejects: list[Reject] = []
    for c in conversions:
        if c.event_id in seen:
            rejects.append(
                reject(
                    c.event,
                    RejectReason.DUPLICATE_EVENT,
                    f"conversion event_id {c.event_id!r} was already counted; producers "
                    "must give every conversion its own event_id",
                )
            )
        else:
            seen.add(c.event_id)
            kept.append(c)
    return kept, rejects


def attribute(
    conversions: Sequence[Conversion],
    candidates: Mapping[tuple[str, str], list[ExposureRecord]],
    unexposed: Mapping[tuple[str, str], list[datetime]],
    grace: timedelta,
) -> tuple[list[Attributed], list[Waiting], list[Reject]]:
    """Attribute conversions (in order) to exposures; mutates the candidates it converts.

    `unexposed`: per (experiment, visitor), when the decisions of record that have no
    exposure yet were made. A conversion after such a decision may belong to its exposure,
    still on its way (a backlog interleaves topics): it waits rather than being charged to
    an older exposure. Without any exposure in its window it waits too. An expired
    conversion waits no more: it goes to what is known, or is refused as unattributable
    (and returned in `waiting` too, to be kept as expired).
    """
    attributed: list[Attributed] = []
    waiting: list[Waiting] = []
    rejects: list[Reject] = []
    for c in conversions:
        pair = (c.experiment_id, c.visitor_id)
        exposures = candidates.get(pair, [])
        target = next(
            (
                e
                for e in sorted(exposures, key=lambda e: e.exposed_at, reverse=True)
                if e.exposed_at <= c.occurred_at <= e.exposed_at + c.window
            ),
            None,
        )
        newer_decision = any(
            (target is None or at > target.exposed_at) and at <= c.occurred_at
            for at in unexposed.get(pair, ())
        )
        if (not c.expired and (target is None or newer_decision)) or target is None:
            waiting.append(
                Waiting(
                    c.event,
                    "exposure",
                    c.event_id,
                    c.experiment_id,
                    c.visitor_id,
                    None,
                    c.value,
                    c.occurred_at,
                    c.occurred_at + c.window + grace,
                )
            )
            if c.expired:
                rejects.append(
                    reject(
                        c.event,
                        RejectReason.UNATTRIBUTABLE,
                        f"conversion {c.event_id!r} has no exposure of visitor "
                        f"{c.visitor_id!r} in experiment {c.experiment_id!r} within its "
                        f"attribution window ({c.window.total_seconds():,.0f} s) plus "
                        f"{grace.total_seconds():,.0f} s of grace; send the exposure first",
                    )
                )
        else:
            repeat = target.conversion_event_id is not None
            if not repeat:
                target.conversion_event_id = c.event_id
            attributed.append(Attributed(c, target, repeat))
    return attributed, waiting, rejects


# ------------------------------------------------------------------ deltas


DELTA_FIELDS = tuple(f.name for f in fields(VariantStats) if not f.name.startswith("effective_"))
"""What a delta carries: the raw sums of core/snapshot.py (the owner derives the effective)."""


def deltas(
    exposed: Iterable[tuple[Exposure, DecisionRecord]], attributed: Iterable[Attributed]
) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """Per (experiment, segment), per variant, what the batch adds (see core/snapshot.py)."""
    out: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(
        lambda: defaultdict(lambda: dict.fromkeys(DELTA_FIELDS, 0.0))
    )
    for _, d in exposed:
        row = out[(d.experiment_id, d.segment_key)][d.variant_id]
        row["exposures"] += 1
        if d.source in IPW_SOURCES:
            row["ipw_weight"] += 1.0 / d.propensity
            row["ipw_weight_sq"] += 1.0 / d.propensity**2
    for a in attributed:
        e = a.exposure
        row = out[(e.experiment_id, e.segment_key)][e.variant_id]
        row["conversion_value"] += a.conversion.value or 0.0
        if a.repeat:
            row["repeat_conversions"] += 1
            continue
        row["conversions"] += 1
        if e.source in IPW_SOURCES:
            row["ipw_conversions"] += 1.0 / e.propensity
            row["ipw_conversions_sq"] += 1.0 / e.propensity**2
    return {key: {v: dict(r) for v, r in rows.items()} for key, rows in out.items()}
