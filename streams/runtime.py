"""What the stages of one worker share: replicas, the state store, limits, sending.

Agents stay thin: each takes a batch of raw records, calls the pure step of its stage,
and hands the results to `Runtime.send`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import orjson

from streams import metrics
from streams.experiments import ExperimentRegistry
from streams.pipeline.events import Limits, RawEvent, RecentIds, Reject
from streams.pipeline.replica import WeightsReplica
from streams.settings import Settings
from streams.sink.state import StateStore
from streams.topics import DEADLETTER, topic_specs

log = logging.getLogger("bandit_stream")
T = TypeVar("T")
SendFn = Callable[[str, bytes | None, bytes], Awaitable[Awaitable[Any]]]


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = {base: spec.name for base, spec in topic_specs(settings).items()}
        self.base_of = {name: base for base, name in self.topics.items()}
        self.registry = ExperimentRegistry()
        self.weights = WeightsReplica()
        self.recent_visits = RecentIds()
        self.limits = Limits(
            max_event_bytes=settings.max_event_bytes,
            max_future_skew=timedelta(seconds=settings.max_future_skew_s),
        )
        self.replicas_ready = asyncio.Event()
        self.stopping = False
        self._store: StateStore | None = None
        self._store_lock = asyncio.Lock()
        self.send_raw: SendFn | None = None

    async def store(self) -> StateStore:
        async with self._store_lock:
            if self._store is None:
                self._store = await StateStore.connect(self.settings.database_dsn)
            return self._store

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def send(self, base: str, records: Iterable[tuple[bytes | None, Any]]) -> int:
        """Send JSON documents to a topic and wait until the broker has them all."""
        assert self.send_raw is not None, "the app sets send_raw when it starts"
        topic = self.topics[base]
        pending = [await self.send_raw(topic, key, orjson.dumps(doc)) for key, doc in records]
        if pending:
            await asyncio.gather(*pending)
            metrics.EVENTS_OUT.labels(topic=base).inc(len(pending))
        return len(pending)

    async def dead_letter(self, rejects: list[Reject]) -> None:
        if not rejects:
            return
        now = datetime.now(UTC)
        await self.send(DEADLETTER, ((r.event.key, r.dead_letter(now)) for r in rejects))
        for r in rejects:
            metrics.DEAD_LETTERS.labels(reason=str(r.rejected.reason)).inc()
            log.info(
                "dead letter %s: %s (%s[%d]@%d)",
                r.rejected.reason,
                r.rejected.detail,
                r.event.topic,
                r.event.partition,
                r.event.offset,
            )

    async def run_batch(self, stage: str, step: Callable[[], Awaitable[T]]) -> T:
        """Apply one batch; a worker stopping mid-batch finishes it before faust acks it.

        faust acks a `take_events` batch when the agent leaves it, even by cancellation
        (worker shutdown, rebalance). So the batch runs in its own task that cancellation
        does not reach; if it cannot finish while the worker stops, the process exits at
        once, committing nothing more: Kafka redelivers, and the offsets kept in Postgres
        make the redelivery harmless.
        """
        task = asyncio.ensure_future(self.retrying(stage, step))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self.stopping = True
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=30)
            except BaseException:
                log.critical(
                    "%s: the batch in flight could not be applied while stopping; "
                    "exiting without committing it",
                    stage,
                )
                os._exit(70)
            raise

    async def retrying(self, stage: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run a batch step until it succeeds: a batch is never acked before it is applied.

        Errors here are the infrastructure's (database or broker unavailable): bad input is
        refused by the pure steps and never raises. The batch waits, the service stays up.
        """
        delay = 0.2
        while True:
            try:
                return await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.stopping:
                    raise
                metrics.STAGE_ERRORS.labels(stage=stage).inc()
                log.exception("%s: batch failed, retrying in %.1f s", stage, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def _exit_uncommitted(stage: str) -> NoReturn:
    log.critical(
        "%s: the batch in flight could not be applied while the worker stops; "
        "exiting without committing it (Kafka will deliver it again)",
        stage,
    )
    logging.shutdown()
    os._exit(70)


def raw_event(message: Any) -> RawEvent:
    """faust's Message → RawEvent (topic, partition, offset, key and value bytes)."""
    return RawEvent(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
    )
