"""The Faust application: the stages' agents, the replicas, the timers and the web pages.

Agents: track (exposures, conversions), changes (experiment-changes).
Tasks with plain consumers (`agents.plain`): decide (visits), record (decisions), learn
(segment-deltas).
Timers: the experiment owner's weights and insights, and the sweep of what waits and of
unsent deltas. Pages: health, metrics, POST /decide, dashboard.

Run it with `bandit-stream worker` (or `python -m faust -A streams.app worker`). Agents keep
concurrency 1 (faust-streaming #606) and consume raw bytes: decoding and validation happen in
the pure steps, so a bad record is dead-lettered instead of restarting an agent.
"""

from __future__ import annotations

import gc
import logging
from typing import Any, cast

import faust

from streams import kafka_clients, logs, metrics
from streams.agents.http import decide_request
from streams.agents.plain import DECIDE, LEARN, RECORD, PlainStage, consume_forever
from streams.agents.publish import Publisher
from streams.agents.replicas import run_replicas
from streams.agents.track import resend_outbox, sweep_waiting, track_batch
from streams.runtime import Runtime, raw_event
from streams.settings import get_settings
from streams.topics import (
    CONVERSIONS,
    EXPERIMENT_CHANGES,
    EXPOSURES,
)
from streams.web import Dashboard

log = logging.getLogger("bandit_stream")
logs.quiet_kafka_client()
settings = get_settings()
runtime = Runtime(settings)

app = faust.App(
    settings.app_id,
    **kafka_clients.faust_broker(settings),  # brokers and their TLS / SASL credentials
    # exactness comes from the offsets kept with the state in Postgres (README "Exact
    # counts"); faust's exactly_once would cost ~40 % and, under load, its SIGTERM can
    # fail flushing a producer it already stopped
    processing_guarantee="at_least_once",
    stream_wait_empty=False,  # stopping cancels the agents; Runtime.run_batch finishes the batch
    broker_max_poll_records=500,  # one poll fits in a buffer's headroom: a stalled stage
    stream_buffer_maxsize=4096,  # pauses its own partitions only, not the whole worker
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    broker_commit_interval=settings.commit_interval_s,
    broker_session_timeout=settings.session_timeout_s,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    web_host=settings.web_host,
    web_bind=settings.web_host,  # faust binds 0.0.0.0 unless told (web_host is only advertised)
    web_port=settings.web_port,
)


def _raw_topic(*names: str) -> faust.TopicT:
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


tracked_topic = _raw_topic(runtime.topics[EXPOSURES], runtime.topics[CONVERSIONS])
changes_topic = _raw_topic(runtime.topics[EXPERIMENT_CHANGES])


def _assigned(base: str) -> set[int]:
    """The partitions of one topic this worker holds now."""
    name = runtime.topics[base]
    return {tp.partition for tp in app.consumer.assignment() if tp.topic == name}


publisher = Publisher(runtime, lambda: _assigned(EXPERIMENT_CHANGES))


def _bind_producer() -> None:
    """Every stage sends through faust's producer (started and flushed with the worker), in
    batches (`kafka_clients.send_all`): the aiokafka producer it wraps is reached through
    faust's private `_ensure_producer` (faust.transport.drivers.aiokafka, 0.15.x), which
    raises NotReady, as faust's own `send` does, while it is not started."""
    if runtime.send_raw is None:
        producer: Any = app.producer  # `_ensure_producer` is not on faust's ProducerT

        async def send(topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
            await kafka_clients.send_all(producer._ensure_producer(), topic, records)

        runtime.send_raw = send


GC_YOUNG_THRESHOLD = 50_000


def _tune_collector() -> None:
    """Once started: exempt the start-up heap (faust, aiokafka, numpy, scipy, the replicas)
    from the cyclic garbage collector (`gc.freeze`), and collect the youngest generation
    every 50,000 net allocations instead of 700. A batch allocates a few objects per
    record, nearly all freed by reference counting, but with the default thresholds they
    set off a collection every 700, and every tenth of those (every hundredth, a full one)
    walks the older generations, start-up heap included. Measured with `bench pipeline
    --visits 100000`: 25 % more events/s (README "Performance")."""
    if gc.get_threshold()[0] != GC_YOUNG_THRESHOLD:
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def _hold_commits() -> None:
    """faust commits only what `Runtime.committable` allows: never past the first record of
    a batch the runtime has not applied (faust acks a batch when its stream stops)."""
    consumer: Any = app.consumer  # the private method below is not on faust's ConsumerT
    if getattr(consumer, "_bandit_holds", False):
        return
    # the one place every faust commit goes through (faust.transport.consumer, 0.15.x)
    filter_offsets = consumer._filter_committable_offsets

    def committable(tps: Any) -> dict[Any, int]:
        return runtime.committable(filter_offsets(tps))

    consumer._filter_committable_offsets = committable
    consumer._bandit_holds = True


def _running() -> bool:
    return runtime.replicas_ready.is_set() and runtime.send_raw is not None


@app.task
async def replicas() -> None:
    await run_replicas(runtime)


async def _started() -> None:
    """What every stage waits for: the replicas read, and the producer bound."""
    await runtime.replicas_ready.wait()
    _bind_producer()
    _tune_collector()


async def _plain(stage: PlainStage) -> None:
    """A stage read outside faust (`streams.agents.plain`)."""
    await _started()
    await consume_forever(runtime, stage)


@app.task
async def decide() -> None:
    await _plain(DECIDE)


@app.task
async def record() -> None:
    await _plain(RECORD)


@app.task
async def learn() -> None:
    await _plain(LEARN)


# `stream: Any`: faust's Stream has take_events, its StreamT annotation does not
@app.agent(tracked_topic, concurrency=1)
async def track(stream: Any) -> None:
    """Exposures and conversions: the one batch stage faust reads (its commits held until
    applied, `_hold_commits`)."""
    await _started()
    _hold_commits()
    async for events in stream.take_events(
        settings.batch_max, within=settings.track_batch_within_s
    ):
        await runtime.run_batch("track", [raw_event(e.message) for e in events], track_batch)


@app.agent(changes_topic, concurrency=1)
async def changes(stream: Any) -> None:
    """Marks the experiments this worker owns as changed (published on the next tick)."""
    async for events in stream.take_events(1000, within=0.05):
        publisher.changed([raw_event(e.message) for e in events])


@app.timer(interval=settings.weights_interval_s)
async def publish_weights() -> None:
    """The owned experiments' weights, from one snapshot each (never raises)."""
    if _running():
        await publisher.tick()


@app.timer(interval=1.0)
async def publish_insights() -> None:
    """Lift reports, anomalies and recommendations of the owned experiments (never raises)."""
    if _running():
        await publisher.report()


@app.timer(interval=2.0)
async def sweep() -> None:
    """Deltas left unsent by a crash; waiting records that can go on or must leave."""
    if not _running():
        return
    try:
        await resend_outbox(runtime)
        await sweep_waiting(runtime, _assigned(EXPOSURES))
    except Exception as exc:
        runtime.log_failure("sweeping waiting records", exc)


@app.page("/live")
async def live(web: Any, request: Any) -> Any:
    return web.json({"live": True})


@app.page("/ready")
async def ready(web: Any, request: Any) -> Any:
    ok = runtime.replicas_ready.is_set() and not app.rebalancing
    metrics.READY.set(1 if ok else 0)
    return web.json({"ready": ok, "experiments": len(runtime.registry)}, status=200 if ok else 503)


@app.page("/metrics")
async def prometheus(web: Any, request: Any) -> Any:
    return web.text(metrics.render().decode(), content_type="text/plain; version=0.0.4")


def _stopping(sender: Any, *args: Any, **kwargs: Any) -> None:
    """A batch failing from now on ends the worker instead of being retried."""
    runtime.stopping = True
    log.info("worker stopping: a batch that fails from now on is not retried")


# mode's Signal.connect is typed for a receiver union mypy cannot match; any callable works
cast(Any, app.on_before_shutdown).connect(_stopping)


# --- POST /decide: decisions over HTTP (streams/agents/http.py) ---------------------------


@app.page("/decide")
class DecideView(faust.web.View):
    """One visit or a JSON array of visits in, the decision (or an array of them) out."""

    async def post(self, request: Any, **kwargs: Any) -> Any:
        _bind_producer()
        answer = await decide_request(runtime, request)
        return self.bytes(answer.body, content_type="application/json", status=answer.status)


# --- the dashboard: live, read-only insights pages (streams/web) -------------------------
# the token rule looks at what the server binds and advertises now (CLI flags included)
dashboard = Dashboard(runtime, lambda: (app.conf.web_bind, app.conf.web_host))
cast(Any, app.on_before_shutdown).connect(dashboard.close)


@app.page("/dashboard")
async def dashboard_page(web: Any, request: Any) -> Any:
    return dashboard.page(request).to_response(web)


@app.page("/dashboard/api/state")
async def dashboard_state(web: Any, request: Any) -> Any:
    return (await dashboard.state(request)).to_response(web)


@app.page("/dashboard/{asset}")
async def dashboard_asset(web: Any, request: Any, asset: str) -> Any:
    return dashboard.asset(asset).to_response(web)
