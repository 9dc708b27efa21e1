"""The dashboard's answers, with a stand-in runtime and reader (no worker, no database)."""

from __future__ import annotations

import asyncio
import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.contracts import load_schema
from streams.experiments import ExperimentRegistry, new_experiment_document
from streams.settings import Settings
from streams.sink.dashboard import HistoryPoint, Latest
from streams.web import Dashboard
from streams.web.handlers import ASSETS, SECURITY_HEADERS, static_file

pytestmark = pytest.mark.unit

STATIC = Path(__file__).resolve().parents[3] / "streams" / "web" / "static"
EXAMPLES: list[dict[str, Any]] = load_schema("insights")["examples"]


@dataclass
class Request:
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class Runtime:
    def __init__(self, token: str | None = None, interval: float = 10.0) -> None:
        self.settings = Settings.model_validate(
            {"BANDIT_DASHBOARD_TOKEN": token, "BANDIT_INSIGHTS_INTERVAL_S": interval}
        )
        assert (self.settings.dashboard_token is None) == (token is None)
        assert not isinstance(self.settings.dashboard_token, str)  # a SecretStr
        self.registry = ExperimentRegistry()
        self.replicas_ready = asyncio.Event()
        self.replicas_ready.set()


class Reader:
    """Serves the schema's examples as the latest publication of every experiment."""

    def __init__(self, insight_id: int = 7, fail: bool = False) -> None:
        self.insight_id = insight_id
        self.fail = fail
        self.publications = 0

    async def latest(self, experiment_ids: list[str]) -> dict[str, Latest]:
        if self.fail:
            raise ConnectionRefusedError("database down")
        return {e: Latest(e, self.insight_id, None, 9123) for e in experiment_ids}

    async def anomaly_counts(self, latest: list[Latest]) -> dict[str, int]:
        return {x.experiment_id: 1 for x in latest}  # the examples have one

    async def publication(self, experiment_id: str) -> list[dict[str, Any]]:
        self.publications += 1
        return [{**copy.deepcopy(d), "experiment_id": experiment_id} for d in EXAMPLES]

    async def history(self, experiment_id: str) -> list[HistoryPoint]:
        return [HistoryPoint("2026-11-29T03:00:00.000Z", 9123, {"*": {"decisions": 9000}})]


def dashboard(
    hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.1"), token: str | None = None, **kw: Any
) -> tuple[Dashboard, Runtime, Reader]:
    rt = Runtime(token)
    rt.registry.apply(
        "landing-2026", new_experiment_document("landing-2026", ["headline-a", "headline-b"])
    )
    reader = Reader(**kw)
    return Dashboard(rt, lambda: hosts, reader), rt, reader  # type: ignore[arg-type]


def test_the_page_and_its_files_are_package_data() -> None:
    html = static_file("index.html").decode()
    for name in ASSETS:
        assert f'"/dashboard/{name}"' in html
        assert (STATIC / name).read_bytes() == static_file(name)
    assert not re.search(r"(src|href)=\"https?://", html), "nothing from the internet"


def test_the_script_writes_data_as_text_only() -> None:
    script = static_file("dashboard.js").decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    assert "http://" not in script.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in script


async def test_loopback_page_and_state() -> None:
    board, _, _ = dashboard()
    page = board.page(Request())
    assert page.status == 200 and page.content_type == "text/html"
    reply = await board.state(Request())
    assert reply.status == 200 and reply.headers["Cache-Control"] == "no-store"
    state = orjson.loads(reply.body)
    [exp] = state["experiments"]
    assert exp["experiment_id"] == "landing-2026"
    assert exp["lift_report"]["report"]["global"]["decisions"] == 9000
    assert [a["report"]["type"] for a in exp["anomalies"]] == ["sample_ratio_mismatch"]
    assert state["refresh_s"] == 5.0


async def test_only_the_experiment_asked_for_is_read_in_full() -> None:
    board, rt, reader = dashboard()
    rt.registry.apply("other", new_experiment_document("other", ["a", "b"]))
    state = orjson.loads((await board.state(Request(query={"experiment": "other"}))).body)
    assert state["shown"] == "other" and reader.publications == 1
    full = [e["experiment_id"] for e in state["experiments"] if e["detail"]]
    tabs = {e["experiment_id"]: e["anomaly_count"] for e in state["experiments"]}
    assert full == ["other"] and tabs == {"landing-2026": 1, "other": 1}
    first = orjson.loads((await board.state(Request(query={"experiment": "nope"}))).body)
    assert first["shown"] == "landing-2026"


async def test_nothing_new_is_a_304_without_reading_the_documents() -> None:
    board, _, reader = dashboard()
    first = await board.state(Request())
    tag = first.headers["ETag"]
    again = await board.state(Request(headers={"If-None-Match": tag}))
    assert (again.status, again.body, reader.publications) == (304, b"", 1)
    reader.insight_id += 1  # a newer publication
    newer = await board.state(Request(headers={"If-None-Match": tag}))
    assert newer.status == 200 and newer.headers["ETag"] != tag


async def test_not_loopback_and_no_token_stays_closed() -> None:
    board, _, reader = dashboard(hosts=("0.0.0.0", "127.0.0.1"))
    assert board.page(Request()).status == 403
    reply = await board.state(Request(query={"token": "guess"}))
    assert reply.status == 403 and b"BANDIT_DASHBOARD_TOKEN" in reply.body
    assert reader.publications == 0


async def test_a_token_opens_it_by_header_or_query() -> None:
    board, _, _ = dashboard(hosts=("0.0.0.0", "0.0.0.0"), token="t0k3n-long-enough")
    assert board.page(Request()).status == 401
    assert board.page(Request(query={"token": "t0k3n-long-enough"})).status == 200
    assert (await board.state(Request(query={"token": "wrong"}))).status == 401
    bearer = Request(headers={"Authorization": "Bearer t0k3n-long-enough"})
    assert (await board.state(bearer)).status == 200


async def test_a_database_outage_is_a_503_the_page_retries() -> None:
    board, _, _ = dashboard(fail=True)
    reply = await board.state(Request())
    assert reply.status == 503
    assert b"retrying" in orjson.loads(reply.body)["error"].encode()


def test_assets_and_unknown_names() -> None:
    board, _, _ = dashboard(hosts=("0.0.0.0",))  # code, no data: served without the token
    css = board.asset("dashboard.css")
    assert (css.status, css.content_type) == (200, "text/css")
    assert board.asset("dashboard.js").content_type == "text/javascript"
    assert board.asset("../settings.py").status == 404
    assert board.asset("index.html").status == 404


def test_every_answer_carries_the_security_headers() -> None:
    board, _, _ = dashboard()

    class Web:
        def bytes(self, body: bytes, **kw: Any) -> dict[str, Any]:
            return {"body": body, **kw}

    response = board.page(Request()).to_response(Web())
    for name, value in SECURITY_HEADERS.items():
        assert response["headers"][name] == value
    assert "default-src 'none'" in response["headers"]["Content-Security-Policy"]
    assert response["headers"]["Referrer-Policy"] == "no-referrer"
    assert response["headers"]["Content-Type"] == "text/html; charset=utf-8"
