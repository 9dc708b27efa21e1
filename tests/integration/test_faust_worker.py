"""A Faust worker with exactly_once, as a real subprocess on the real broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams import kafka_clients
from streams.admin import ensure_topics
from streams.settings import Settings
from streams.topics import TopicSpec
from tests.integration.workers import FaustWorker

pytestmark = pytest.mark.integration


async def test_exactly_once_worker_processes_end_to_end_and_stops_on_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    source, sink = f"{settings.topic_prefix}echo-in", f"{settings.topic_prefix}echo-out"
    await ensure_topics(
        settings,
        [
            TopicSpec(base="in", name=source, partitions=2, key="k", contract=None),
            TopicSpec(base="out", name=sink, partitions=2, key="k", contract=None),
        ],
    )
    worker = FaustWorker(
        "tests.integration.apps.echo",
        {
            "ECHO_APP_ID": settings.app_id,
            "ECHO_SOURCE": source,
            "ECHO_SINK": sink,
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        },
        tmp_path / "worker.log",
    ).start()
    try:
        await asyncio.to_thread(worker.wait_log_ready)
        producer = kafka_clients.producer(settings)
        await producer.start()
        try:
            for i in range(200):
                await producer.send(source, key=f"v{i % 17}".encode(), value=f"{i}".encode())
            await producer.flush()
        finally:
            await producer.stop()

        consumer = kafka_clients.consumer(
            settings,
            sink,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        got: list[int] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while len(got) < 200 and loop.time() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(int(r.value or b"-1") for r in records)
        finally:
            await consumer.stop()
        assert sorted(got) == list(range(200)), worker.log_text()[-3000:]
    finally:
        code = await asyncio.to_thread(worker.stop)
    assert code == 0, "SIGTERM stops the worker cleanly:\n" + worker.log_text()[-3000:]
