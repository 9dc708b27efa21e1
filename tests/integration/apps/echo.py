"""A minimal Faust app for the foundation test: count into a Table, forward every message.

Configured from the environment so that each test gets its own app id and topics.
"""

import os

import faust

from streams import kafka_clients
from streams.settings import Settings

app = faust.App(
    os.environ["ECHO_APP_ID"],
    **kafka_clients.faust_broker(Settings()),  # KAFKA_BOOTSTRAP_SERVERS and security, from env
    web_bind="127.0.0.1",
    processing_guarantee="exactly_once",
    store="memory://",
    topic_partitions=int(os.environ.get("ECHO_PARTITIONS", "2")),
    broker_commit_interval=0.5,
)
source = app.topic(
    os.environ["ECHO_SOURCE"],
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)
sink = app.topic(
    os.environ["ECHO_SINK"],
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)
seen = app.Table("echo-seen", default=int, partitions=int(os.environ.get("ECHO_PARTITIONS", "2")))


@app.agent(source)
async def echo(stream: faust.StreamT[bytes]) -> None:
    async for key, value in stream.items():
        seen[key] += 1
        await sink.send(key=key, value=value)
