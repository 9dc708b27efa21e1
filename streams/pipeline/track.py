"""The track stage, pure: exposures and conversions → validated records and attribution.

Exposures count once per decision, by the variant the exposure carries (what was shown).
A conversion goes to the visitor's latest exposure in the experiment whose attribution
window contains it, at most one conversion per exposure; anything else is unattributable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from streams.contracts import RejectReason, parse_timestamp
from streams.experiments import ExperimentRegistry
from streams.pipeline.events import Limits, RawEvent, Reject, decode, reject


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


@dataclass(frozen=True)
class Conversion:
    event: RawEvent
    event_id: str
    experiment_id: str
    visitor_id: str
    occurred_at: datetime
    value: float | None
    window: timedelta


@dataclass
class ExposureRecord:
    """An exposure as stored (exposure_log), the candidate a conversion attributes to."""

    decision_id: str
    variant_id: str
    segment_key: str
    exposed_at: datetime
    conversion_event_id: str | None


@dataclass(frozen=True)
class Attributed:
    conversion: Conversion
    exposure: ExposureRecord


def prepare_track(
    events: Sequence[RawEvent],
    exposures_topic: str,
    registry: ExperimentRegistry,
    limits: Limits,
    now: datetime,
) -> tuple[list[Exposure], list[Conversion], list[Reject]]:
    """Validate a mixed batch of exposures and conversions (told apart by topic)."""
    exposures: list[Exposure] = []
    conversions: list[Conversion] = []
    rejects: list[Reject] = []
    for event in events:
        contract = "exposures" if event.topic == exposures_topic else "conversions"
        doc = decode(contract, event, limits, now)
        if isinstance(doc, Reject):
            rejects.append(doc)
            continue
        experiment = registry.get(doc["experiment_id"])
        if experiment is None:
            rejects.append(
                reject(
                    event,
                    RejectReason.UNKNOWN_EXPERIMENT,
                    f"experiment {doc['experiment_id']!r} is not defined",
                )
            )
            continue
        if experiment.status == "stopped":
            rejects.append(
                reject(
                    event,
                    RejectReason.EXPERIMENT_NOT_RUNNING,
                    f"experiment {doc['experiment_id']!r} is stopped; its counts are final",
                )
            )
            continue
        if contract == "exposures":
            if experiment.index_of(doc["variant_id"]) is None:
                rejects.append(
                    reject(
                        event,
                        RejectReason.UNKNOWN_VARIANT,
                        f"variant {doc['variant_id']!r} is not one of experiment "
                        f"{experiment.experiment_id!r}'s variants "
                        f"{list(experiment.variant_ids)}",
                    )
                )
                continue
            exposures.append(
                Exposure(
                    event,
                    doc["event_id"],
                    doc["experiment_id"],
                    doc["visitor_id"],
                    doc["variant_id"],
                    doc["decision_id"],
                    doc["segment_key"],
                    parse_timestamp(doc["occurred_at"]),
                )
            )
        else:
            value = doc.get("value")
            conversions.append(
                Conversion(
                    event,
                    doc["event_id"],
                    doc["experiment_id"],
                    doc["visitor_id"],
                    parse_timestamp(doc["occurred_at"]),
                    float(value) if value is not None else None,
                    timedelta(seconds=experiment.attribution_window_seconds),
                )
            )
    return exposures, conversions, rejects


def attribute(
    conversions: Sequence[Conversion],
    candidates: Mapping[tuple[str, str], list[ExposureRecord]],
) -> tuple[list[Attributed], list[Reject], list[Conversion]]:
    """Attribute conversions (in order) to exposures; mutates the candidates it converts.

    Returns the attributed conversions, the refused ones (a duplicate event, or an exposure
    that already has its conversion) and the waiting ones: no exposure in the window yet.
    Waiting is not refusing: when a backlog is replayed, a conversion can be read before
    the exposure it follows, so it waits (pending_conversions) for its exposure.
    """
    attributed: list[Attributed] = []
    rejects: list[Reject] = []
    waiting: list[Conversion] = []
    for conversion in conversions:
        exposures = candidates.get((conversion.experiment_id, conversion.visitor_id), [])
        if any(e.conversion_event_id == conversion.event_id for e in exposures):
            rejects.append(
                reject(
                    conversion.event,
                    RejectReason.DUPLICATE_EVENT,
                    f"conversion event_id {conversion.event_id!r} was already counted",
                )
            )
            continue
        target = next(
            (
                e
                for e in sorted(exposures, key=lambda e: e.exposed_at, reverse=True)
                if e.exposed_at <= conversion.occurred_at <= e.exposed_at + conversion.window
            ),
            None,
        )
        if target is None:
            waiting.append(conversion)
        elif target.conversion_event_id is not None:
            rejects.append(
                reject(
                    conversion.event,
                    RejectReason.UNATTRIBUTABLE,
                    f"conversion {conversion.event_id!r} is not counted: its "
                    "exposure already has a conversion (at most one per "
                    "exposure)",
                )
            )
        else:
            target.conversion_event_id = conversion.event_id
            attributed.append(Attributed(conversion, target))
    return attributed, rejects, waiting


def dedupe_exposures(exposures: Sequence[Exposure]) -> tuple[list[Exposure], list[Reject]]:
    """Within one batch, the first exposure of a decision counts; later ones are duplicates."""
    first: dict[str, Exposure] = {}
    rejects: list[Reject] = []
    for exposure in exposures:
        if exposure.decision_id in first:
            rejects.append(duplicate_exposure(exposure))
        else:
            first[exposure.decision_id] = exposure
    return list(first.values()), rejects


def duplicate_exposure(exposure: Exposure) -> Reject:
    return reject(
        exposure.event,
        RejectReason.DUPLICATE_EVENT,
        f"decision {exposure.decision_id!r} was already exposed (event "
        f"{exposure.event_id!r}); each decision's exposure counts once",
    )
