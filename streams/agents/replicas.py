"""Each worker's full replicas of the compacted `experiments` and `allocations` topics.

The reader is `streams.client.replicas` (faust-free, shared with the in-process
`DecisionClient`); the worker runs it on its runtime's registry and weights and counts the
records it applies in its metrics.
"""

from __future__ import annotations

from streams import metrics
from streams.client.replicas import Replicas, replicate_forever
from streams.runtime import Runtime


async def run_replicas(rt: Runtime) -> None:
    """Replicate forever; restart the consumer after any error (never crash the worker)."""
    replicas = Replicas(rt.registry, rt.weights, rt.replicas_ready)
    await replicate_forever(rt.settings, replicas, on_update=_count)


def _count(replica: str) -> None:
    metrics.REPLICA_UPDATES.labels(replica=replica).inc()
