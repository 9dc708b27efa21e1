"""Publishing decisions without making the caller wait: a queue drained by a background task.

`publish` only appends to a bounded queue and wakes the sender; the sender hands the
documents to an aiokafka producer that batches them (`linger_ms`) and counts what the broker
acknowledged. A queue that stays full (the broker gone for long) drops the newest
decisions and counts them, rather than growing without bound or blocking the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.client import kafka
from streams.settings import Settings

log = logging.getLogger("bandit_stream.client")


@dataclass
class PublisherStats:
    queued: int = 0
    acknowledged: int = 0
    failed: int = 0
    dropped: int = 0


class DecisionPublisher:
    """Sends decision documents to one topic, keyed by visitor_id, at least once while it runs."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        linger_ms: int = 5,
        max_pending: int = 100_000,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        """`producer` replaces the one built from the settings (tests inject a stand-in)."""
        self.topic = topic
        self.max_pending = max_pending
        self.stats = PublisherStats()
        self._producer = producer or kafka.producer(
            settings, acks="all", linger_ms=linger_ms, max_batch_size=256 * 1024
        )
        self._queue: deque[dict[str, Any]] = deque()
        self._wakeup = asyncio.Event()
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_warning = 0.0

    async def start(self) -> None:
        await self._producer.start()
        self._task = asyncio.create_task(self._run(), name="decision-publisher")

    def publish(self, doc: dict[str, Any]) -> None:
        """Queue one decision document (never blocks, never raises)."""
        if len(self._queue) >= self.max_pending:
            self.stats.dropped += 1
            now = time.monotonic()
            if now - self._last_warning > 10:
                self._last_warning = now
                log.warning(
                    "%d decisions waiting to be published: dropping (%d dropped so far)",
                    len(self._queue),
                    self.stats.dropped,
                )
            return
        self._queue.append(doc)
        self.stats.queued += 1
        if not self._wakeup.is_set():
            self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                doc = self._queue[0]
                try:
                    future = await self._producer.send(
                        self.topic, orjson.dumps(doc), key=str(doc["visitor_id"]).encode()
                    )
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self._queue.popleft()
                    self.stats.failed += 1
                    log.exception("a decision could not be handed to the producer")
                    continue
                self._queue.popleft()
                self._in_flight.add(future)
                future.add_done_callback(self._acknowledged)

    def _acknowledged(self, future: asyncio.Future[Any]) -> None:
        self._in_flight.discard(future)
        if future.cancelled() or future.exception() is not None:
            self.stats.failed += 1
            if not future.cancelled():
                log.error("a decision was not published: %r", future.exception())
        else:
            self.stats.acknowledged += 1

    async def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued decision was acknowledged or failed; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue or self._in_flight:
            if time.monotonic() > deadline:
                return False
            if self._task is not None and self._task.done():
                return False
            if self._in_flight:
                await asyncio.wait(set(self._in_flight), timeout=0.05)
            else:
                await asyncio.sleep(0.001)
        return True

    async def stop(self, timeout: float = 30.0) -> None:
        """Publish what is queued (up to `timeout`), then stop the producer."""
        try:
            if not await self.flush(timeout):
                log.warning(
                    "stopping with %d decisions unpublished",
                    len(self._queue) + len(self._in_flight),
                )
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            await self._producer.stop()
