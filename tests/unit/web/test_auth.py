"""Who may read the dashboard: loopback servers are open, anything else needs the token."""

from __future__ import annotations

import pytest

from streams.web.auth import Access, check, is_loopback, token_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.10.0.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("192.168.1.10", False),
        ("worker-1.internal", False),
        ("", False),
        (None, False),
    ],
)
def test_loopback_addresses(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_token_is_read_from_the_header_first_then_the_query() -> None:
    assert token_of({}, {"Authorization": "Bearer abc"}) == "abc"
    assert token_of({}, {"Authorization": "bearer  abc "}) == "abc"
    assert token_of({}, {"X-Dashboard-Token": "xyz"}) == "xyz"
    assert token_of({"token": "q"}, {}) == "q"
    assert token_of({"token": "q"}, {"Authorization": "Bearer h"}) == "h"
    assert token_of({}, {"Authorization": "Basic dXNlcjpwdw=="}) is None
    assert token_of({"token": ""}, {}) is None


def test_loopback_without_a_token_is_open() -> None:
    assert check(["127.0.0.1", "127.0.0.1"], None, None) is Access.ALLOWED


def test_reachable_from_other_hosts_without_a_token_stays_closed() -> None:
    assert check(["0.0.0.0", "127.0.0.1"], None, None) is Access.UNCONFIGURED
    assert check(["127.0.0.1", "worker.example"], None, "anything") is Access.UNCONFIGURED


def test_a_configured_token_is_required_everywhere() -> None:
    for hosts in (["0.0.0.0"], ["127.0.0.1"]):
        assert check(hosts, "s3cret-token", "s3cret-token") is Access.ALLOWED
        assert check(hosts, "s3cret-token", "s3cret-tokeN") is Access.NO_TOKEN
        assert check(hosts, "s3cret-token", None) is Access.NO_TOKEN
        assert check(hosts, "s3cret-token", "") is Access.NO_TOKEN
