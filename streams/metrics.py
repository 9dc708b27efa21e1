"""Prometheus metrics of a worker (text format at /metrics), in one registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_IN = Counter("bandit_events_in_total", "Records consumed", ["topic"], registry=REGISTRY)
EVENTS_OUT = Counter("bandit_events_out_total", "Records produced", ["topic"], registry=REGISTRY)
DEAD_LETTERS = Counter(
    "bandit_dead_letters_total", "Records refused, by reason", ["reason"], registry=REGISTRY
)
REPLAYED = Counter(
    "bandit_replayed_records_total",
    "Records skipped because their effects were already applied (offsets in Postgres)",
    ["stage"],
    registry=REGISTRY,
)
CONVERSIONS_WAITING = Counter(
    "bandit_conversions_waiting_total",
    "Conversions parked because no exposure in their window was known yet",
    registry=REGISTRY,
)
DECISION_LATENCY = Histogram(
    "bandit_decision_latency_seconds",
    "From the visit's Kafka timestamp to its decision being sent",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    registry=REGISTRY,
)
WEIGHTS_PUBLISHED = Counter(
    "bandit_weights_published_total", "Allocation documents published", registry=REGISTRY
)
REPLICA_UPDATES = Counter(
    "bandit_replica_updates_total",
    "Records applied to local replicas",
    ["replica"],
    registry=REGISTRY,
)
STAGE_ERRORS = Counter(
    "bandit_stage_errors_total", "Batches retried after an error", ["stage"], registry=REGISTRY
)
READY = Gauge("bandit_ready", "1 once the replicas caught up and agents run", registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
