"""`DecisionClient`: decide in your own process, publish to `decisions` in the background.

    async with DecisionClient(settings) as client:
        await client.ready()
        decision = client.decide(visit)  # no network: the service's decide, on local replicas

The client follows the `experiments` and `allocations` topics like every worker does, decides
with the service's own functions (`streams.client.decider`), and hands each decision to a
batching producer without waiting for it, so the state of record and analytics see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from streams.client.decider import Decision, LocalDecider
from streams.client.errors import ClientNotReady, InvalidVisit, ServiceAnswerError
from streams.client.publisher import DecisionPublisher, PublisherStats
from streams.client.replicas import Replicas, replicate_forever
from streams.contracts import RejectReason
from streams.pipeline.events import Limits
from streams.settings import Settings, get_settings
from streams.topics import DECISIONS, topic_name

log = logging.getLogger("bandit_stream.client")

VisitInput = Mapping[str, Any] | bytes
"""A visit (schemas/visits.schema.json) as a mapping, or as the JSON bytes of one."""


class DecisionClient:
    """Decisions in process, equal to the service's for the same visit and weights version.

    `service_url` (e.g. ``http://127.0.0.1:6066``) lets `adecide` ask the service's
    `/decide` about visitors of sticky experiments this client has not decided for.
    `publish=False` decides without publishing (tests, dry runs).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        service_url: str | None = None,
        publish: bool = True,
        sticky_capacity: int = 100_000,
        linger_ms: int = 5,
        max_pending: int = 100_000,
    ) -> None:
        self.settings = settings or get_settings()
        self.service_url = service_url.rstrip("/") if service_url else None
        self.replicas = Replicas()
        limits = Limits(
            max_event_bytes=self.settings.max_event_bytes,
            max_future_skew=timedelta(seconds=self.settings.max_future_skew_s),
        )
        self.decider = LocalDecider(
            self.replicas.registry, self.replicas.weights, limits, sticky_capacity=sticky_capacity
        )
        self.publisher = (
            DecisionPublisher(
                self.settings,
                topic_name(self.settings, DECISIONS),
                linger_ms=linger_ms,
                max_pending=max_pending,
            )
            if publish
            else None
        )
        self._replica_task: asyncio.Task[None] | None = None
        self._session: Any = None  # aiohttp.ClientSession, only with a service_url
        self.service_fallbacks = 0

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> DecisionClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start following the compacted topics (and the publisher); see `ready`."""
        if self.publisher is not None:
            await self.publisher.start()
        self._replica_task = asyncio.create_task(
            replicate_forever(self.settings, self.replicas), name="decision-client-replicas"
        )
        if self.service_url is not None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def ready(self, timeout: float | None = 60.0) -> None:
        """Wait until the replicas caught up with both topics (TimeoutError after `timeout`)."""
        await asyncio.wait_for(self.replicas.ready.wait(), timeout)

    @property
    def is_ready(self) -> bool:
        return self.replicas.ready.is_set()

    async def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every decision so far is acknowledged by the broker; False on timeout."""
        return True if self.publisher is None else await self.publisher.flush(timeout)

    async def close(self) -> None:
        """Publish what is queued, stop following the topics, close connections."""
        try:
            if self.publisher is not None:
                await self.publisher.stop()
        finally:
            if self._replica_task is not None:
                self._replica_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._replica_task
            if self._session is not None:
                await self._session.close()

    @property
    def stats(self) -> PublisherStats:
        return self.publisher.stats if self.publisher is not None else PublisherStats()

    # --- deciding -----------------------------------------------------------------------

    def decide(self, visit: VisitInput) -> Decision:
        """The decision for one visit, queued for publishing; never waits on the network.

        Raises InvalidVisit (with the dead-letter reason) for a visit the service would
        refuse, ClientNotReady before the replicas caught up. A visitor of a sticky
        experiment keeps the variant this client decided for them last (LRU-bounded);
        one it never decided for gets a fresh decision (see `adecide`).
        """
        if not self.replicas.ready.is_set():
            msg = "the client has not replicated the experiments yet; await client.ready()"
            raise ClientNotReady(msg)
        now = datetime.now(UTC)
        doc = self.decider.document(self.decider.prepare(visit, now), now)
        if self.publisher is not None:
            self.publisher.publish(doc)
        return Decision(**doc)

    async def adecide(self, visit: VisitInput) -> Decision:
        """`decide`, except that a visitor of a sticky experiment this client never decided
        for is asked of the service (`service_url`), which knows every exposure; the
        service publishes that decision itself. Without a service_url, same as `decide`;
        when the service does not answer, decided here from the weights (as the service
        itself does when its exposure log is out of reach) and counted in
        `service_fallbacks`.
        """
        if not self.replicas.ready.is_set():
            msg = "the client has not replicated the experiments yet; await client.ready()"
            raise ClientNotReady(msg)
        now = datetime.now(UTC)
        prepared = self.decider.prepare(visit, now)
        if (
            self._session is None
            or not prepared.experiment.sticky
            or self.decider.known_sticky(prepared) is not None
        ):
            doc = self.decider.document(prepared, now)
            if self.publisher is not None:
                self.publisher.publish(doc)
            return Decision(**doc)
        raw = visit if isinstance(visit, bytes) else orjson.dumps(visit)
        try:
            decision = await self._ask_service(raw)
        except (ServiceAnswerError, TimeoutError) as exc:
            self.service_fallbacks += 1
            log.warning("%s; decided here, from the weights", exc)
            doc = self.decider.document(prepared, now)
            if self.publisher is not None:
                self.publisher.publish(doc)
            return Decision(**doc)
        self.decider.remember(prepared, decision.variant_id, decision.segment_key)
        return decision

    async def _ask_service(self, raw: bytes) -> Decision:
        url = f"{self.service_url}/decide"
        headers = {"content-type": "application/json"}
        try:
            async with self._session.post(url, data=raw, headers=headers) as response:
                body = await response.read()
                status = int(response.status)
        except aiohttp.ClientError as exc:
            msg = f"POST {url} failed: {exc!r}"
            raise ServiceAnswerError(msg) from exc
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if status == 200 and isinstance(doc, dict):
            return Decision(**doc)
        if isinstance(doc, dict) and doc.get("reason") in set(RejectReason):
            raise InvalidVisit(RejectReason(doc["reason"]), str(doc.get("detail", "")))
        msg = f"POST {url} answered {status}: {body[:500]!r}"
        raise ServiceAnswerError(msg)
