"""What the client raises: a refused visit (with the dead-letter reason), or not being ready."""

from __future__ import annotations

from streams.contracts import Rejected, RejectReason
from streams.errors import BanditStreamError, InvalidInput


class InvalidVisit(InvalidInput):
    """A visit the service would dead-letter; `reason` is the dead-letter topic's reason."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @classmethod
    def from_rejected(cls, rejected: Rejected) -> InvalidVisit:
        return cls(rejected.reason, rejected.detail)


class ClientNotReady(BanditStreamError):
    """The client has not replicated the experiments and weights yet (await `ready()`)."""


class ServiceAnswerError(BanditStreamError):
    """The service's `/decide` did not answer with a decision (status and body in the message)."""
