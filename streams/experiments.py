"""Experiment definitions: validated once where they enter (CLI, topic), then plain values.

The `experiments` topic (compacted, keyed by experiment_id) carries the JSON document of
`schemas/experiments.schema.json`; every worker replicates it into an `ExperimentRegistry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from streams.contracts import format_timestamp, validate
from streams.core.segments import validate_dimensions
from streams.errors import ExperimentError

STATUSES = ("running", "paused", "stopped")


@dataclass(frozen=True)
class Experiment:
    """One experiment, as every stage of the pipeline sees it."""

    experiment_id: str
    name: str
    status: str
    variant_ids: tuple[str, ...]
    variant_names: tuple[str | None, ...]
    context_features: tuple[str, ...]
    policy: Mapping[str, Any]
    attribution_window_seconds: int = 86_400
    holdout_share: float = 0.0
    sticky: bool = True
    version: int = 1
    created_at: str = ""
    updated_at: str = ""
    _index: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {v: i for i, v in enumerate(self.variant_ids)})

    @property
    def policy_name(self) -> str:
        return str(self.policy.get("name", "pooled"))

    def index_of(self, variant_id: str) -> int | None:
        return self._index.get(variant_id)

    def to_document(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "name": self.name,
            "status": self.status,
            "variants": [
                {"variant_id": v, **({"name": n} if n else {})}
                for v, n in zip(self.variant_ids, self.variant_names, strict=True)
            ],
            "context_features": list(self.context_features),
            "policy": dict(self.policy),
            "attribution_window_seconds": self.attribution_window_seconds,
            "holdout_share": self.holdout_share,
            "sticky": self.sticky,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def with_status(self, status: str, now: datetime) -> Experiment:
        if status not in STATUSES:
            msg = f"status must be one of {', '.join(STATUSES)}, got {status!r}"
            raise ExperimentError(msg)
        if self.status == "stopped" and status != "stopped":
            msg = f"experiment {self.experiment_id!r} is stopped; a stopped experiment stays so"
            raise ExperimentError(msg)
        return replace(
            self, status=status, version=self.version + 1, updated_at=format_timestamp(now)
        )


def experiment_from_document(doc: Mapping[str, Any]) -> Experiment:
    """Validate a definition against its contract and its semantics; raise ExperimentError."""
    rejected = validate("experiments", doc)
    if rejected is not None:
        raise ExperimentError(rejected.detail)
    variants = doc["variants"]
    ids = tuple(str(v["variant_id"]) for v in variants)
    if len(set(ids)) != len(ids):
        msg = f"variant ids must be unique, got {list(ids)}"
        raise ExperimentError(msg)
    try:
        features = validate_dimensions(doc.get("context_features", []))
    except ValueError as exc:
        raise ExperimentError(str(exc)) from exc
    policy = dict(doc.get("policy") or {"name": "pooled"})
    floor = float(policy.get("floor", 0.0))
    if floor * len(ids) >= 1:
        msg = (
            f"policy.floor {floor} is too large for {len(ids)} variants: it must be < 1/{len(ids)}"
        )
        raise ExperimentError(msg)
    try:
        from streams.core.policies import make_policy

        make_policy(
            str(policy.get("name", "pooled")), {k: v for k, v in policy.items() if k != "name"}
        )
    except ValueError as exc:
        msg = f"policy: {exc}"
        raise ExperimentError(msg) from exc
    return Experiment(
        experiment_id=str(doc["experiment_id"]),
        name=str(doc["name"]),
        status=str(doc["status"]),
        variant_ids=ids,
        variant_names=tuple(v.get("name") for v in variants),
        context_features=features,
        policy=policy,
        attribution_window_seconds=int(doc.get("attribution_window_seconds", 86_400)),
        holdout_share=float(doc.get("holdout_share", 0.0)),
        sticky=bool(doc.get("sticky", True)),
        version=int(doc.get("version", 1)),
        created_at=str(doc.get("created_at", "")),
        updated_at=str(doc.get("updated_at", "")),
    )


def new_experiment_document(
    experiment_id: str,
    variants: list[str],
    *,
    name: str | None = None,
    context_features: list[str] | None = None,
    policy: Mapping[str, Any] | None = None,
    attribution_window_seconds: int = 86_400,
    holdout_share: float = 0.0,
    sticky: bool = True,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A definition document for `experiment create` (validated by the caller)."""
    stamp = format_timestamp(now or datetime.now(UTC))
    return {
        "experiment_id": experiment_id,
        "name": name or experiment_id,
        "status": "running",
        "variants": [{"variant_id": v} for v in variants],
        "context_features": list(context_features or []),
        "policy": dict(policy or {"name": "pooled"}),
        "attribution_window_seconds": attribution_window_seconds,
        "holdout_share": holdout_share,
        "sticky": sticky,
        "version": 1,
        "created_at": stamp,
        "updated_at": stamp,
    }


class ExperimentRegistry:
    """The current definitions, by id: a worker's replica of the `experiments` topic."""

    def __init__(self) -> None:
        self._by_id: dict[str, Experiment] = {}

    def apply(self, experiment_id: str, doc: Mapping[str, Any] | None) -> None:
        """Apply one record of the compacted topic; older versions never win."""
        if doc is None:
            self._by_id.pop(experiment_id, None)
            return
        experiment = experiment_from_document(doc)
        current = self._by_id.get(experiment_id)
        if current is None or experiment.version >= current.version:
            self._by_id[experiment_id] = experiment

    def get(self, experiment_id: str) -> Experiment | None:
        return self._by_id.get(experiment_id)

    def experiments(self) -> list[Experiment]:
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)
