"""The naive Faust app `bench pipeline` compares the pipeline with.

Per event: one Table update (memory store) and one `topic.send`, the way a Faust tutorial
writes a stream processor. Configured from the environment so that every run gets its own
app id and topics:

| variable | meaning |
|---|---|
| `KAFKA_BOOTSTRAP_SERVERS` | the broker (default: the project's local one) |
| `BENCH_REF_APP_ID` | Faust app id (consumer group, changelog topic names) |
| `BENCH_REF_INPUTS` | comma-separated input topics |
| `BENCH_REF_OUTPUT` | the output topic (one message per input) |
| `BENCH_REF_PARTITIONS` | partitions of the inputs (the Table's changelog gets as many) |
| `BENCH_REF_PROCESSING_GUARANTEE` | `at_least_once` (default) or `exactly_once` |
| `BENCH_REF_COMMIT_INTERVAL_S` | Faust's broker commit interval (default: Faust's) |

Run it with `python -m faust -A streams.bench.faust_reference worker --web-port N`;
`GET /ready` answers 200 once the agent runs and no rebalance is under way.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import faust

from streams import kafka_clients
from streams.settings import Settings

_PARTITIONS = int(os.environ.get("BENCH_REF_PARTITIONS", "8"))
_COMMIT_INTERVAL = os.environ.get("BENCH_REF_COMMIT_INTERVAL_S")
_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")

_optional: dict[str, Any] = (
    {"broker_commit_interval": float(_COMMIT_INTERVAL)} if _COMMIT_INTERVAL else {}
)

app = faust.App(
    os.environ.get("BENCH_REF_APP_ID", "bench-faust-reference"),
    **kafka_clients.faust_broker(
        Settings().model_copy(update={"kafka_bootstrap_servers": _BOOTSTRAP})
    ),
    processing_guarantee=os.environ.get("BENCH_REF_PROCESSING_GUARANTEE", "at_least_once"),
    store="memory://",
    topic_partitions=_PARTITIONS,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    **_optional,
)


def _raw_topic(*names: str) -> faust.TopicT:
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


inputs = _raw_topic(*os.environ.get("BENCH_REF_INPUTS", "bench-ref-input").split(","))
output = _raw_topic(os.environ.get("BENCH_REF_OUTPUT", "bench-ref-output"))
counts = app.Table("reference-counts", default=int, partitions=_PARTITIONS)
_running = asyncio.Event()


@app.agent(inputs)
async def relay(stream: faust.StreamT[bytes]) -> None:
    _running.set()
    async for key, value in stream.items():
        counts[key] += 1
        await output.send(key=key, value=value)


@app.page("/ready")
async def ready(web: Any, request: Any) -> Any:
    ok = _running.is_set() and not app.rebalancing
    return web.json({"ready": ok}, status=200 if ok else 503)
