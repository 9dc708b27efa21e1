"""Deciding in your own Python process: `python examples/decide_in_process.py [experiment]`.

Reads KAFKA_BOOTSTRAP_SERVERS (and BANDIT_TOPIC_PREFIX, ...) like the service does.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime

from streams.client import DecisionClient, InvalidVisit


async def main(experiment_id: str) -> None:
    async with DecisionClient() as client:
        await client.ready()  # the experiments and weights replicated
        visit = {
            "event_id": str(uuid.uuid4()),
            "experiment_id": experiment_id,
            "visitor_id": "visitor-42",
            "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "context": {"user_agent": "Mozilla/5.0 (Macintosh)", "utm_source": "google"},
        }
        try:
            decision = client.decide(visit)  # no network: published in the background
        except InvalidVisit as exc:
            sys.exit(f"refused: {exc.reason}: {exc.detail}")
        print(f"show {decision.variant_id} (p={decision.propensity:.3f}, {decision.source})")
    # leaving the block publishes what is queued


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "headline"))
