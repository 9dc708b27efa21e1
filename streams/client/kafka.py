"""The client's aiokafka clients, with the service's TLS and SASL settings.

`streams.kafka_clients` builds every Kafka client of the service from the settings; it also
builds faust's broker options and imports faust for them, which `import streams.client`
must not do, so it is imported here when a client starts, not when this package loads.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.settings import Settings


def consumer(settings: Settings, **options: Any) -> AIOKafkaConsumer:
    from streams import kafka_clients

    return kafka_clients.consumer(settings, **options)


def producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    from streams import kafka_clients

    return kafka_clients.producer(settings, **options)
