"""The Kafka client's reconnect flood is let through once a minute per message."""

from __future__ import annotations

import logging

import pytest

from streams.logs import OncePerWindow

pytestmark = pytest.mark.unit


def _record(msg: str, level: int = logging.ERROR, name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, ("node-1",), None)


def test_the_same_message_passes_once_per_window_others_pass() -> None:
    limit = OncePerWindow(window_s=60)
    flood = [limit.filter(_record("Unable connect to node with id %s")) for _ in range(6000)]
    assert flood.count(True) == 1, "one line for a flood of the same message"
    assert limit.filter(_record("Unable to update metadata from %s")), "another message passes"
    assert limit.filter(_record("Unable connect to node with id %s", name="aiokafka.cluster"))
    assert all(limit.filter(_record("fetching", logging.INFO)) for _ in range(3)), "info passes"


def test_after_the_window_the_message_passes_again() -> None:
    limit = OncePerWindow(window_s=0.0)
    assert limit.filter(_record("x")) and limit.filter(_record("x"))
