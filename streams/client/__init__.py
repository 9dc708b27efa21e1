"""Deciding in your own process: the service's decisions without a network round trip.

`DecisionClient` follows the compacted `experiments` and `allocations` topics, decides with
the service's own functions and publishes its decisions to `decisions` in the background.
This package never imports faust (a worker is not needed to decide).
"""

from streams.client.client import DecisionClient, VisitInput
from streams.client.decider import Decision, LocalDecider, StickyCache
from streams.client.errors import ClientNotReady, InvalidVisit, ServiceAnswerError
from streams.client.publisher import PublisherStats

__all__ = [
    "ClientNotReady",
    "Decision",
    "DecisionClient",
    "InvalidVisit",
    "LocalDecider",
    "PublisherStats",
    "ServiceAnswerError",
    "StickyCache",
    "VisitInput",
]
