"""Creating the service's topics (idempotent), with the layout of `streams.topics`."""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams import kafka_clients
from streams.settings import Settings
from streams.topics import TopicSpec, topic_specs


async def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    An existing topic with another partition count is reported, not altered: repartitioning
    moves keys between partitions and would orphan the state co-partitioned with them.
    """
    wanted = specs if specs is not None else list(topic_specs(settings).values())
    admin = kafka_clients.admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [spec for spec in wanted if spec.name not in existing]
        if missing:
            await admin.create_topics(
                [
                    NewTopic(
                        name=spec.name,
                        num_partitions=spec.partitions,
                        replication_factor=settings.replication_factor,
                        topic_configs=spec.config,
                    )
                    for spec in missing
                ]
            )
        await _wait_for_leaders(admin, [spec.name for spec in wanted])
        return [spec.name for spec in missing]
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    """A topic is usable once every partition has a leader (avoids NotLeader on first use)."""
    for _ in range(100):
        described = await admin.describe_topics(names)
        if all(
            topic.get("error_code", 0) == 0
            and topic["partitions"]
            and all(p.get("leader", -1) >= 0 for p in topic["partitions"])
            for topic in described
        ):
            return
        await asyncio.sleep(0.1)


async def partition_counts(settings: Settings) -> dict[str, int]:
    """Partitions of every topic of the service that exists (for `topics list`)."""
    specs = topic_specs(settings)
    admin = kafka_clients.admin(settings)
    await admin.start()
    try:
        names = [spec.name for spec in specs.values()]
        existing = set(await admin.list_topics())
        described = await admin.describe_topics([n for n in names if n in existing])
        return {topic["topic"]: len(topic["partitions"]) for topic in described}
    finally:
        await admin.close()
