"""The dashboard in a real browser: Debian's Chromium, headless, driven by playwright.

A worker publishes insights every second; the page must say what it waits for while there
is no experiment, show the experiment's segments once traffic is counted, follow the reports
as they are published, and show a newer publication (with an anomaly) when one is stored.
The screenshots are kept in `.local/artifacts/` (their paths are printed).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from streams.contracts import format_timestamp, validate
from streams.errors import ServiceError
from streams.services import process
from streams.settings import Settings
from streams.sink.insights import latest_report
from streams.sink.state import StateStore
from tests.integration.pipeline import (
    Pipeline,
    conversions_for,
    create_experiment,
    decisions_for,
    prepare,
    produce_docs,
    synthetic_exposures,
)
from tests.integration.workers import REPO, FaustWorker

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / ".local" / "artifacts"
VARIANTS = ["headline-a", "headline-b", "headline-c"]
MOBILE = "device:mobile|source:instagram"
DESKTOP = "device:desktop|source:google"


def chromium_executable() -> str:
    """Debian's Chromium, installed from its packages when missing and we are root (as the
    local services install PostgreSQL and Java); never a downloaded browser build."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    process.apt_install(["chromium"], "the dashboard test drives Debian's Chromium")
    found = shutil.which("chromium")
    if found is None:
        raise ServiceError("`chromium` is not on PATH after installing Debian's package")
    return found


@pytest.fixture
async def pipeline(settings: Settings, tmp_path: Path, fresh_database: str) -> Pipeline:
    return await prepare(settings, tmp_path, fresh_database)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    executable = await asyncio.to_thread(chromium_executable)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


async def _store_newer_publication(p: Pipeline, experiment_id: str, marker: str) -> None:
    """A publication newer than the worker's: its latest one, re-dated ahead (so that the
    worker's next ones stay older), with an anomaly and a recommendation of our own."""
    conn = await asyncpg.connect(p.settings.database_dsn)
    try:
        documents = await latest_report(conn, experiment_id)
    finally:
        await conn.close()
    lift = next(d for d in documents if d["kind"] == "lift_report")
    recommendation = next(d for d in documents if d["kind"] == "recommendation")
    now = datetime.now(UTC)
    head = {
        "generated_at": format_timestamp(now + timedelta(minutes=10)),
        "taken_at": format_timestamp(now),
        "snapshot_version": 999_999,
    }
    item = {
        **recommendation["report"]["items"][0],
        "message": f"{marker}: recommendation of the newer publication",
    }
    newer = [
        {**lift, **head},
        {
            **head,
            "experiment_id": experiment_id,
            "kind": "anomaly",
            "report": {
                "type": "sample_ratio_mismatch",
                "severity": "critical",
                "segment_key": MOBILE,
                "variant_id": "headline-a",
                "message": f"{marker}: exposures do not match the logged propensities",
                "statistic": 52.6,
                "p_value": 4e-13,
                "observed": 180.0,
                "expected": 190.0,
                "n": 190,
            },
        },
        {**recommendation, **head, "report": {"items": [item]}},
    ]
    for doc in newer:
        assert validate("insights", doc) is None, validate("insights", doc)
    store = await StateStore.connect(p.settings.database_dsn, size=1)
    try:
        await store.record_insights(newer)
    finally:
        await store.close()


@pytest.mark.timeout(300)
async def test_dashboard_in_chromium_follows_the_published_insights(
    pipeline: Pipeline, browser: Any, unique: str
) -> None:
    from playwright.async_api import expect

    token = secrets.token_urlsafe(24)
    env = {**pipeline.env(), "BANDIT_INSIGHTS_INTERVAL_S": "1", "BANDIT_DASHBOARD_TOKEN": token}
    worker = FaustWorker("streams.app", env, pipeline.tmp / "worker.log").start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        await worker.wait_ready_async()
        base = f"http://127.0.0.1:{worker.web_port}"

        # a token is configured: nothing without it, the data with it
        assert await asyncio.to_thread(_status, f"{base}/dashboard") == 401
        assert await asyncio.to_thread(_status, f"{base}/dashboard/api/state") == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert await asyncio.to_thread(_status, f"{base}/dashboard/api/state", bearer) == 200

        page = await browser.new_page(viewport={"width": 1440, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await page.goto(f"{base}/dashboard?token={token}")

        # no experiment yet: the page says what it waits for; the token left the address bar
        empty = page.get_by_test_id("empty-state")
        await expect(empty).to_contain_text("No experiments yet", timeout=15_000)
        await expect(page.locator("#status")).to_contain_text("live")
        assert "token" not in page.url
        await page.screenshot(path=str(ARTIFACTS / "dashboard-empty.png"))

        # an experiment with traffic in two segments: the page shows both
        await create_experiment(pipeline, "dash", variants=VARIANTS)
        await expect(page.locator(".tab")).to_contain_text("dash", timeout=30_000)
        exposures = synthetic_exposures("dash", [MOBILE, DESKTOP], VARIANTS, 900, seed=11)
        await produce_docs(pipeline, "decisions", decisions_for(exposures))
        await produce_docs(pipeline, "exposures", exposures)
        converted = [
            e
            for e in exposures
            if (e["segment_key"], e["variant_id"]) == (MOBILE, "headline-b")
            or (e["segment_key"] == DESKTOP and int(e["event_id"].rsplit("-", 1)[1]) % 9 == 0)
        ][:110]
        await produce_docs(pipeline, "conversions", conversions_for(converted))
        for segment in (MOBILE, DESKTOP):
            card = page.locator(f'article.segment[data-segment="{segment}"]')
            await expect(card).to_be_visible(timeout=60_000)
            await expect(card.locator("tr[data-variant]")).to_have_count(3)
            await expect(card.locator("svg.chart")).to_have_count(1)
        await expect(page.locator(".summary")).to_contain_text("900", timeout=60_000)
        await expect(page.locator(".recommendation").first).to_be_visible()

        # live: it follows the reports the worker publishes (every second here)
        snapshot = page.get_by_test_id("snapshot")
        first = await snapshot.get_attribute("data-taken-at")
        assert first is not None
        await expect(snapshot).not_to_have_attribute("data-taken-at", first, timeout=30_000)

        # a newer publication is stored: the page shows it, its anomaly and its advice
        marker = f"marker-{unique}"
        await _store_newer_publication(pipeline, "dash", marker)
        await expect(snapshot).to_have_text("999,999", timeout=20_000)
        await expect(page.locator(".anomaly")).to_contain_text(marker)
        await expect(page.locator(".recommendation")).to_contain_text(marker)
        await expect(page.locator(".tab")).to_contain_text("1 anomaly")

        shot = ARTIFACTS / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"dashboard screenshot: {shot} (and dashboard-empty.png, dashboard-no-traffic.png)")
        assert shot.stat().st_size > 20_000

        # a second experiment gets a tab; the page shows the one picked, then back
        await create_experiment(pipeline, "dash-other", variants=["x", "y"])
        tab = page.locator(".tab", has_text="dash-other")
        await expect(tab).to_be_visible(timeout=30_000)
        await tab.click()
        await expect(page.locator("h1")).to_have_text("dash-other")
        waiting = re.compile("No traffic yet|Waiting for the first lift report")
        await expect(page.locator("main")).to_contain_text(waiting)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-no-traffic.png"), full_page=True)
        await page.locator(".tab", has_text=re.compile(r"^dash\b(?!-)")).click()
        await expect(page.locator(".anomaly")).to_contain_text(marker)
        assert errors == [], errors
    finally:
        assert worker.stop() == 0, worker.log_tail(60)
