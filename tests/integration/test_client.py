"""The in-process client against a running worker: the same visits get the same decisions."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from streams.bench.pipeline.traffic import random_context
from streams.client import DecisionClient, InvalidVisit
from streams.contracts import RejectReason, format_timestamp
from streams.settings import Settings
from streams.sink.experiments import set_status
from tests.integration.pipeline import (
    DESKTOP_CHROME,
    Pipeline,
    create_experiment,
    exposure,
    prepare,
    produce,
    produce_docs,
    read,
    visit,
)
from tests.integration.workers import free_port

pytestmark = pytest.mark.integration

MOBILE = "device:mobile|source:instagram"
DESKTOP = "device:desktop|source:google"


@pytest.fixture
async def pipeline(settings: Settings, tmp_path: Path, fresh_database: str) -> Pipeline:
    return await prepare(settings, tmp_path, fresh_database)


def _allocation(experiment: str, segment: str, weights: dict[str, float], version: int) -> bytes:
    return orjson.dumps(
        {
            "experiment_id": experiment,
            "segment_key": segment,
            "weights": weights,
            "source": "pooled" if segment != "*" else "global",
            "version": version,
            "exposures": dict.fromkeys(weights, 100),
            "conversions": dict.fromkeys(weights, 5),
            "updated_at": format_timestamp(datetime.now(UTC)),
        }
    )


async def _publish_weights(p: Pipeline) -> None:
    """Weights for two segments and the experiment-wide ones (no exposures: they stay put)."""
    await produce(
        p,
        "allocations",
        [
            (f"same|{MOBILE}", _allocation("same", MOBILE, {"a": 0.1, "b": 0.7, "c": 0.2}, 40)),
            (f"same|{DESKTOP}", _allocation("same", DESKTOP, {"a": 0.6, "b": 0.1, "c": 0.3}, 25)),
            ("same|*", _allocation("same", "*", {"a": 0.3, "b": 0.3, "c": 0.4}, 90)),
        ],
    )


async def _settled(client: DecisionClient, experiment_id: str, timeout: float = 60) -> None:
    """The worker's first publication of the weights it owns reached the client's replica."""
    deadline = asyncio.get_running_loop().time() + timeout
    while client.replicas.weights.lookup(experiment_id, "*") is None:
        assert asyncio.get_running_loop().time() < deadline, f"no weights for {experiment_id}"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # and whatever it published with them


def _visits(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        experiment = ("loose", "same", "same", "idle")[i % 4]
        doc = visit(experiment, f"visitor-{seed}-{i}")
        doc["context"] = random_context(rng)
        out.append(doc)
    return out


async def test_client_decides_every_visit_as_the_service_does(pipeline: Pipeline) -> None:
    await create_experiment(pipeline, "same", holdout_share=0.1)
    await create_experiment(pipeline, "loose", sticky=False, context_features=["device"])
    await create_experiment(pipeline, "idle")
    await set_status(pipeline.settings, "idle", "paused")  # decided, never published: uniform
    await _publish_weights(pipeline)
    worker = pipeline.worker().start()
    try:
        async with DecisionClient(pipeline.settings, publish=False) as client:
            await asyncio.to_thread(worker.wait_http_ready)
            await client.ready()
            await _settled(client, "loose")
            visits = _visits(3000, seed=1)
            await produce_docs(pipeline, "visits", visits)
            mine = {v["event_id"]: client.decide(v) for v in visits}
            theirs = await read(pipeline, "decisions", lambda d: len(d) >= len(visits), 120)
    finally:
        assert worker.stop() == 0

    def fields(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k != "decided_at"}

    assert len(theirs) == len(visits)
    versions = [(d["weights_version"], mine[d["event_id"]].weights_version) for d in theirs]
    assert all(a == b for a, b in versions), "the weights moved during the test"
    equal = [d for d in theirs if fields(d) == fields(mine[d["event_id"]].as_document())]
    assert len(equal) == len(theirs), [(d, mine[d["event_id"]]) for d in theirs if d not in equal][
        :3
    ]
    sources = {d["source"] for d in theirs}
    assert sources == {"pooled", "global", "holdout", "uniform"}, sources


async def test_client_publishes_its_decisions_and_refuses_what_the_service_refuses(
    pipeline: Pipeline,
) -> None:
    await create_experiment(pipeline, "pub")
    async with DecisionClient(pipeline.settings, linger_ms=5) as client:
        await client.ready()
        decided = [client.decide(visit("pub", f"visitor-{i}")).as_document() for i in range(300)]
        with pytest.raises(InvalidVisit) as caught:
            client.decide(visit("no-such-experiment", "v"))
        assert await client.flush(30)
        assert (client.stats.acknowledged, client.stats.failed) == (300, 0)
    assert caught.value.reason == RejectReason.UNKNOWN_EXPERIMENT
    published = await read(pipeline, "decisions", lambda d: len(d) >= 300)
    key = lambda d: d["event_id"]  # noqa: E731
    assert sorted(published, key=key) == sorted(decided, key=key)


async def _exposure_recorded(url: str, experiment_id: str, visitor_id: str) -> None:
    """Once the service answers the visitor as sticky: the track stage recorded the exposure."""
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            body = orjson.dumps(visit(experiment_id, visitor_id))
            async with session.post(f"{url}/decide", data=body) as response:
                if (await response.json())["source"] == "sticky":
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("the exposure was not recorded within 30 s")


async def test_sticky_visitors_are_asked_of_the_service_then_kept(pipeline: Pipeline) -> None:
    await create_experiment(pipeline, "stick")
    worker = pipeline.worker().start()
    try:
        await asyncio.to_thread(worker.wait_http_ready)
        first = visit("stick", "returning", ua=DESKTOP_CHROME, utm_source="google")
        await produce_docs(pipeline, "visits", [first])
        decided = await read(pipeline, "decisions", lambda d: len(d) >= 1)
        shown = decided[0]["variant_id"]
        await produce_docs(pipeline, "exposures", [exposure(decided[0])])
        url = f"http://127.0.0.1:{worker.web_port}"
        await _exposure_recorded(url, "stick", "returning")
        async with DecisionClient(pipeline.settings, service_url=url) as client:
            await client.ready()
            asked = await client.adecide(visit("stick", "returning"))
            kept = client.decide(visit("stick", "returning"))
            fresh = await client.adecide(visit("stick", "newcomer"))
        gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        async with DecisionClient(pipeline.settings, service_url=gone, publish=False) as alone:
            await alone.ready()
            fallback = await alone.adecide(visit("stick", "returning"))
    finally:
        assert worker.stop() == 0
    assert (asked.variant_id, asked.source, asked.propensity) == (shown, "sticky", 1.0)
    assert (kept.variant_id, kept.source) == (shown, "sticky")
    assert fresh.source != "sticky", "a visitor never exposed gets a drawn decision"
    assert fallback.source != "sticky" and alone.service_fallbacks == 1, (
        "without an answer from the service, decided from the weights"
    )
