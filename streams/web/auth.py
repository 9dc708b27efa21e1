"""Who may read the dashboard: anyone on a loopback-only server, else the token's holders.

Pure functions of the addresses the web server binds and advertises, the configured token
and what a request carries (`?token=` or `Authorization: Bearer …` / `X-Dashboard-Token`).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from enum import Enum

TOKEN_HEADER = "X-Dashboard-Token"


class Access(Enum):
    """The verdict on one request."""

    ALLOWED = 200
    NO_TOKEN = 401  # a token is required and the request has none, or a wrong one
    UNCONFIGURED = 403  # the server is reachable from other hosts and no token is configured


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; False for anything that other hosts may
    reach: 0.0.0.0, ::, a routable address, any other name."""
    if not host:
        return False
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def token_of(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The token a request presents, if any (header first, then `?token=`)."""
    bearer = headers.get("Authorization", "")
    if bearer[:7].lower() == "bearer ":
        return bearer[7:].strip() or None
    return headers.get(TOKEN_HEADER) or query.get("token") or None


def check(hosts: Iterable[str | None], token: str | None, presented: str | None) -> Access:
    """The verdict: a configured token is always required; without one, only a server
    bound and advertised on loopback addresses answers."""
    if token:
        if presented is not None and hmac.compare_digest(presented.encode(), token.encode()):
            return Access.ALLOWED
        return Access.NO_TOKEN
    if all(is_loopback(h) for h in hosts):
        return Access.ALLOWED
    return Access.UNCONFIGURED
