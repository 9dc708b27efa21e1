"""The fault model of issue 17 on the real broker and Postgres (scenarios in
`streams.bench.faults`, here at scale 1): bad input dead-lettered once with a reason, outages
waited out, restarts and rebalances survived, and the counts of `variant_segment_state`
exact per (segment, variant) afterwards.

Outages use a private Postgres cluster or broker (the project's local-service code, own state
directory and port): the shared services are never stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.bench import faults
from streams.settings import Settings
from tests.integration.faults import assert_clean, report

pytestmark = pytest.mark.integration


async def test_fuzz_every_bad_event_dead_lettered_once_counts_exact(
    settings: Settings, tmp_path: Path, fresh_database: str
) -> None:
    result = await faults.fuzz(settings, tmp_path, fresh_database, scale=1, seed=17)
    print(report(result))  # the numbers, with -s
    assert result.faults >= 10_000, report(result)
    assert len(result.facts["by_kind"]) >= 20, report(result)
    assert result.facts["fuzz_crash_lines"] == 0, report(result)
    assert result.facts["poison"] == 0, report(result)
    assert_clean(result)


async def test_postgres_down_30s_decisions_go_on_counts_exact(
    settings: Settings, tmp_path: Path
) -> None:
    result = await faults.postgres_outage(settings, tmp_path, scale=1, outage_s=30)
    print(report(result))  # the numbers, with -s
    assert result.facts["decisions_during_outage"] > 0, report(result)
    assert result.facts["error_lines"] <= 8, report(result)
    assert_clean(result)


async def test_broker_restart_mid_stream_counts_exact(
    settings: Settings, tmp_path: Path, fresh_database: str
) -> None:
    result = await faults.broker_restart(settings, tmp_path, fresh_database, scale=1)
    print(report(result))  # the numbers, with -s
    assert_clean(result)
    # a broker down ~10 s: a few lines a second at most, as for a Postgres outage
    assert result.facts["error_lines"] <= 1_000, report(result)


async def test_sigterm_during_outage_ends_worker_then_counts_exact(
    settings: Settings, tmp_path: Path
) -> None:
    result = await faults.sigterm_outage(settings, tmp_path, scale=1, bound_s=40)
    print(report(result))  # the numbers, with -s
    assert result.facts["exit_code"] is not None, report(result)
    assert result.facts["exit_s"] <= 40, report(result)
    assert_clean(result)


async def test_rebalance_under_load_one_decision_per_visit_counts_exact(
    settings: Settings, tmp_path: Path, fresh_database: str
) -> None:
    result = await faults.rebalance(settings, tmp_path, fresh_database, scale=1)
    print(report(result))  # the numbers, with -s
    assert result.facts["first_exit_code"] == 0, report(result)
    assert result.facts["visits"] > 0, report(result)
    assert_clean(result)


async def test_two_workers_hot_segment_no_deadlock_counts_exact(
    settings: Settings, tmp_path: Path
) -> None:
    result = await faults.hot_segment(settings, tmp_path, scale=1)
    print(report(result))  # the numbers, with -s
    assert result.facts["segments"] >= 30, report(result)
    assert result.facts["deadlocks_server_log"] == 0, report(result)
    assert result.facts["deadlocks_worker_logs"] == 0, report(result)
    assert_clean(result)


async def test_a_segment_delta_sent_twice_is_applied_once(
    settings: Settings, tmp_path: Path, fresh_database: str
) -> None:
    """What broke the broker-restart scenario, alone: two copies of one delta in a batch."""
    result = await faults.delta_twice(settings, tmp_path, fresh_database, copies=2)
    print(report(result))  # the numbers, with -s
    assert_clean(result)


async def test_a_waiting_record_that_fails_alone_does_not_hold_back_the_others(
    settings: Settings, tmp_path: Path, fresh_database: str
) -> None:
    result = await faults.poison_waiting(settings, tmp_path, fresh_database, scale=1)
    print(report(result))  # the numbers, with -s
    assert result.facts["still_waiting"] == 0, report(result)
    assert_clean(result)
