"""The worker's logging: the Kafka client's reconnect messages, once a minute each.

While a broker is down, aiokafka retries its connections in a tight loop and logs every try
(thousands of ERROR lines a second). The same message of the same logger is let through once
a minute; the first one says what happened, and the metrics say for how long.
"""

from __future__ import annotations

import logging
import time

WINDOW_S = 60.0


class OncePerWindow(logging.Filter):
    """Lets a (logger, message template) through once per `window_s` at WARNING and above."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        super().__init__()
        self.window_s = window_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.window_s:
            return False
        self._last[key] = now
        return True


def quiet_kafka_client(prefix: str = "aiokafka") -> OncePerWindow:
    """Install one `OncePerWindow` on every logger of the Kafka client (imported already)."""
    limit = OncePerWindow()
    names = [
        n for n in logging.Logger.manager.loggerDict if n == prefix or n.startswith(f"{prefix}.")
    ]
    for name in {prefix, *names}:
        logging.getLogger(name).addFilter(limit)
    return limit
