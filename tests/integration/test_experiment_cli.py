"""`bandit-stream experiment …`: Postgres is written, the compacted topic carries each version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.integration.pipeline import Pipeline, prepare, read

pytestmark = pytest.mark.integration


@pytest.fixture
async def pipeline(settings: Settings, tmp_path: Path, fresh_database: str) -> Pipeline:
    return await prepare(settings, tmp_path, fresh_database)


def cli(p: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **p.env()}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "experiment", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_create_pause_stop_and_the_topic_follows(pipeline: Pipeline) -> None:
    made = cli(pipeline, "create", "hero", "--variants", "a,b,c", "--features", "device,source")
    assert made.returncode == 0, made.stderr
    assert "created hero" in made.stdout

    definition = pipeline.tmp / "checkout.yaml"
    definition.write_text(
        "experiment_id: checkout\nname: Checkout button\nstatus: running\n"
        "variants: [{variant_id: green}, {variant_id: blue}]\n"
        "context_features: [device]\npolicy: {name: segment, min_samples_per_segment: 50}\n"
        "attribution_window_seconds: 3600\nholdout_share: 0.1\nsticky: true\nversion: 1\n"
        "created_at: '2026-01-01T00:00:00Z'\nupdated_at: '2026-01-01T00:00:00Z'\n"
    )
    assert cli(pipeline, "create", "--file", str(definition)).returncode == 0

    again = cli(pipeline, "create", "hero", "--variants", "a,b")
    assert again.returncode == 1 and "exists already" in again.stderr

    bad = cli(pipeline, "create", "bad", "--variants", "a,b", "--features", "shoe_size")
    assert bad.returncode == 1 and "shoe_size" in bad.stderr

    assert cli(pipeline, "pause", "hero").returncode == 0
    assert cli(pipeline, "stop", "hero").returncode == 0
    resumed = cli(pipeline, "resume", "hero")
    assert resumed.returncode == 1 and "stays so" in resumed.stderr

    listed = cli(pipeline, "list").stdout
    assert "hero" in listed and "stopped" in listed and "checkout" in listed
    assert '"status": "stopped"' in cli(pipeline, "show", "hero").stdout

    records = await read(pipeline, "experiments", lambda d: len(d) >= 4, contract="experiments")
    hero = [r for r in records if r["experiment_id"] == "hero"]
    assert [(r["status"], r["version"]) for r in hero] == [
        ("running", 1),
        ("paused", 2),
        ("stopped", 3),
    ]
    checkout = next(r for r in records if r["experiment_id"] == "checkout")
    assert checkout["holdout_share"] == 0.1 and checkout["policy"]["name"] == "segment"
