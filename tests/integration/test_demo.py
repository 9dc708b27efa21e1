"""`bandit-stream demo` end to end, briefly, on the test session's Kafka and Postgres."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest

from streams import demo
from streams.settings import Settings
from tests.conftest import Services

pytestmark = pytest.mark.integration


def _running(marker: str) -> list[int]:
    """Pids of the processes whose command line contains `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.timeout(300)
def test_demo_runs_the_pipeline_and_cleans_up(
    services: Services, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        KAFKA_BOOTSTRAP_SERVERS=services.bootstrap_servers,
        DATABASE_URL=services.database_url,
        BANDIT_TOPIC_PREFIX=f"t{unique}.",
        BANDIT_PARTITIONS=4,
        BANDIT_STATE_DIR=tmp_path,
    )
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)

    code = demo.main(parser.parse_args(["--seconds", "12", "--rate", "150"]), settings)

    out = capsys.readouterr().out
    log = tmp_path / "demo" / "worker.log"
    context = f"{out}\n--- worker log tail ---\n" + "\n".join(
        log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
    )
    assert code == 0, context
    for segment in demo.TRUTH:
        assert re.search(rf"^  {re.escape(segment.key)} +\d+ ", out, re.M), context
    totals = re.search(r"visits sent (\d+), decisions read (\d+)", out)
    assert totals is not None, context
    visits, decisions = int(totals.group(1)), int(totals.group(2))
    assert decisions > 0 and decisions == visits, context
    assert re.search(r"dead letters 0\b", out), context
    # the insights the worker published (every 5 s in the demo), and their plot
    assert "recommendations published on `insights`:" in out, context
    assert (tmp_path / "demo" / "report.png").stat().st_size > 10_000
    pid = re.search(r"worker +pid (\d+)", out)
    run = re.search(r"experiment demo-([0-9a-f]{8})", out)
    assert pid is not None and run is not None, context
    assert not Path(f"/proc/{pid.group(1)}").exists(), "the worker process is still running"
    assert _running(f"data-{run.group(1)}") == [], "a worker of this run is still running"
    assert re.search(r"worker +stopped \(exit code 0\)", out), context
