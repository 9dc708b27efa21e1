"""What the stages of one worker share: replicas, the state store, limits, sending.

Agents stay thin: each takes a batch of raw records, calls the pure step of its stage,
and hands the results to `Runtime.send`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import orjson

from streams import metrics
from streams.contracts import RejectReason
from streams.errors import is_transient
from streams.experiments import ExperimentRegistry
from streams.pipeline.events import Limits, RawEvent, RecentIds, Reject, reject
from streams.pipeline.replica import WeightsReplica
from streams.settings import Settings
from streams.sink.state import StateStore
from streams.topics import DEADLETTER, topic_specs

log = logging.getLogger("bandit_stream")
SendFn = Callable[[str, list[tuple[bytes | None, bytes]]], Awaitable[None]]
"""Sends (key, value) records to a topic and returns when the broker has them all."""
BatchHandler = Callable[["Runtime", Sequence[RawEvent]], Awaitable[None]]
PoisonHandler = Callable[[RawEvent], Awaitable[None]]
PERMANENT_TRIES = 3


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
        self._last_outage_log: dict[str, float] = {}
        self._last_failure_log: dict[str, float] = {}
        # first offsets of the batches in flight, per (topic, partition): see `run_batch`
        self._held: dict[tuple[str, int], list[int]] = {}

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
        encoded = [(key, orjson.dumps(doc)) for key, doc in records]
        if encoded:
            await self.send_raw(topic, encoded)
            metrics.EVENTS_OUT.labels(topic=base).inc(len(encoded))
        return len(encoded)

    async def dead_letter(self, rejects: list[Reject]) -> None:
        if not rejects:
            return
        now = datetime.now(UTC)
        await self.send(
            DEADLETTER, ((_bounded_key(r.event.key), r.dead_letter(now)) for r in rejects)
        )
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

    async def run_batch(self, stage: str, batch: Sequence[RawEvent], handle: BatchHandler) -> None:
        """Apply one batch; until it is applied, Kafka's offsets do not pass its records.

        faust acks the records of a `take_events` batch when the agent leaves it, even by
        cancellation, and when its stream stops (worker shutdown, rebalance: the stream
        closes the batch's generator while the agent is still applying it), then commits
        what it acked. So the batch runs in its own task that cancellation does not reach,
        and holds the commits of its partitions at its first offsets (`committable`) until
        it is applied; if it cannot finish while the worker stops, the process exits at
        once: Kafka redelivers from before it, and the offsets kept in Postgres make the
        redelivery harmless.
        """
        firsts = _first_offsets(batch)
        for key, offset in firsts.items():
            self._held.setdefault(key, []).append(offset)
        task = asyncio.ensure_future(self.settle(stage, batch, handle))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self.stopping = True
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=30)
            except BaseException:
                exit_uncommitted(stage)
            raise
        finally:
            if task.done() and not task.cancelled() and task.exception() is None:
                for key, offset in firsts.items():
                    held = self._held[key]
                    held.remove(offset)
                    if not held:
                        del self._held[key]

    def committable(self, offsets: Mapping[Any, int]) -> dict[Any, int]:
        """The offsets faust may commit (keys: its TopicPartitions): none past the first
        record of a batch not applied yet (see `run_batch`)."""
        out = {}
        for tp, offset in offsets.items():
            held = self._held.get((tp.topic, tp.partition))
            out[tp] = min(offset, *held) if held else offset
        return out

    async def settle(
        self,
        stage: str,
        batch: Sequence[RawEvent],
        handle: BatchHandler,
        poisoned: PoisonHandler | None = None,
        *,
        faust_acks: bool = True,
    ) -> None:
        """Apply a batch until it is applied, or its poison records are dead-lettered.

        An outage (`errors.is_transient`) waits and retries, forever, with backoff and one
        log line a minute. Any other error is retried `PERMANENT_TRIES` times, then the batch
        is split in halves, each settled on its own, down to the record that fails alone:
        that one goes to the dead-letter topic with the exception (then to `poisoned`, if
        given, so that what holds it can let it go), and the partition goes on. A batch that
        fails while the worker stops is never acked: the process exits — or, for records
        faust does not ack (`faust_acks=False`: the plain consumers, which commit only after
        the batch, and the sweep, whose offsets live in Postgres), the error goes to the
        caller, which stops.
        """
        tries = 0
        delay = 0.2
        while True:
            try:
                await handle(self, batch)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.stopping:
                    if not faust_acks:
                        raise
                    exit_uncommitted(stage)
                if is_transient(exc):
                    metrics.TRANSIENT_WAITS.labels(stage=stage).inc()
                    self._log_outage(stage, exc)
                    await self._pause(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                tries += 1
                metrics.STAGE_ERRORS.labels(stage=stage).inc()
                if tries < PERMANENT_TRIES:
                    log.warning("%s: batch of %d failed (%r); retrying", stage, len(batch), exc)
                    await self._pause(0.1 * tries)
                    continue
                if len(batch) == 1:
                    await self._poison(stage, batch[0], exc)
                    if poisoned is not None:
                        await poisoned(batch[0])
                    return
                log.warning(
                    "%s: batch of %d keeps failing (%r); splitting it", stage, len(batch), exc
                )
                half = len(batch) // 2
                await self.settle(stage, batch[:half], handle, poisoned, faust_acks=faust_acks)
                await self.settle(stage, batch[half:], handle, poisoned, faust_acks=faust_acks)
                return

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early to exit when the worker stops."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not self.stopping:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))

    def log_failure(self, what: str, exc: BaseException) -> None:
        """Once a minute per `what`: an outage in a line, anything else with its traceback
        (a timer that fails on every tick would otherwise log twice a second)."""
        if is_transient(exc):
            self._log_outage(what, exc)
            return
        now = time.monotonic()
        if now - self._last_failure_log.get(what, -1e9) >= 60:
            self._last_failure_log[what] = now
            log.error("%s failed; tried again on every tick", what, exc_info=exc)

    def _log_outage(self, stage: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_outage_log.get(stage, -1e9) >= 60:
            self._last_outage_log[stage] = now
            log.error("%s: waiting for the infrastructure (%s); retrying with backoff", stage, exc)

    async def _poison(self, stage: str, event: RawEvent, exc: BaseException) -> None:
        metrics.POISON.labels(stage=stage).inc()
        log.error(
            "%s: record %s[%d]@%d fails alone (%r); dead-lettered",
            stage,
            event.topic,
            event.partition,
            event.offset,
            exc,
        )
        detail = (
            f"the {stage} stage failed on this record alone: {type(exc).__name__}: {exc}"
            "; report it with this dead letter (it was not applied)"
        )
        await self.dead_letter([reject(event, RejectReason.PROCESSING_ERROR, detail[:1500])])


MAX_DEAD_LETTER_KEY = 1024


def _bounded_key(key: bytes | None) -> bytes | None:
    """The original key when small; a digest of it otherwise (a record must stay < 1 MB)."""
    if key is None or len(key) <= MAX_DEAD_LETTER_KEY:
        return key
    return b"blake2b:" + hashlib.blake2b(key, digest_size=16).hexdigest().encode()


def _first_offsets(batch: Sequence[RawEvent]) -> dict[tuple[str, int], int]:
    firsts: dict[tuple[str, int], int] = {}
    for e in batch:
        key = (e.topic, e.partition)
        firsts[key] = min(e.offset, firsts.get(key, e.offset))
    return firsts


def exit_uncommitted(stage: str) -> NoReturn:
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
