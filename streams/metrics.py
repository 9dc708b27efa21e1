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
WAITING = Counter(
    "bandit_waiting_records_total",
    "Records parked to wait: a conversion for its exposure, an exposure for its decision, "
    "an event for its experiment's definition",
    registry=REGISTRY,
)
EXPIRED = Counter(
    "bandit_expired_records_total",
    "Records whose wait ended without what they waited for (dead-lettered)",
    registry=REGISTRY,
)
TRANSIENT_WAITS = Counter(
    "bandit_transient_errors_total",
    "Batch attempts that failed on the infrastructure (database or broker) and wait to retry",
    ["stage"],
    registry=REGISTRY,
)
POISON = Counter(
    "bandit_poison_records_total",
    "Records that made their stage fail until isolated; dead-lettered as processing_error",
    ["stage"],
    registry=REGISTRY,
)
STICKY_FALLBACKS = Counter(
    "bandit_sticky_lookup_failures_total",
    "Decide batches whose sticky lookup failed (database down): decided from memory and weights",
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
INSIGHTS_PUBLISHED = Counter(
    "bandit_insights_published_total", "Insight documents published", registry=REGISTRY
)
REPLICA_UPDATES = Counter(
    "bandit_replica_updates_total",
    "Records applied to local replicas",
    ["replica"],
    registry=REGISTRY,
)
STAGE_ERRORS = Counter(
    "bandit_stage_errors_total",
    "Batch attempts that failed on an unexpected error (retried, then split)",
    ["stage"],
    registry=REGISTRY,
)
READY = Gauge("bandit_ready", "1 once the replicas caught up and agents run", registry=REGISTRY)


def render() -> bytes:
    return generate_latest(REGISTRY)
