"""`bandit-stream report EXPERIMENT_ID`: the latest insights of an experiment, for a person.

Reads what the experiment's owner published (`insights_history`, the insights topic's record)
and prints it as a table (`streams/analytics/render.py`); `--json` prints the documents,
`--plot FILE.png` draws per-segment rates with intervals and the allocation over time. When
nothing was published yet (no worker ran since the experiment started), the report is
computed now from the state of record, and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment_id", help="the experiment")
    parser.add_argument("--json", action="store_true", help="print the documents as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw a plot")


async def load(
    settings: Settings, experiment_id: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """(latest documents, lift history, computed now?) of one experiment."""
    from streams.sink.insights import latest_report, lift_history

    conn = await asyncpg.connect(settings.database_dsn)
    try:
        documents = await latest_report(conn, experiment_id)
        history = await lift_history(conn, experiment_id)
    finally:
        await conn.close()
    if documents:
        return documents, history, False
    documents = await _compute_now(settings, experiment_id)
    return documents, [d for d in documents if d["kind"] == "lift_report"], True


async def _compute_now(settings: Settings, experiment_id: str) -> list[dict[str, Any]]:
    from streams.analytics.report import build_insights
    from streams.errors import ExperimentError
    from streams.sink.experiments import load_experiments
    from streams.sink.state import StateStore

    found = [e for e in await load_experiments(settings) if e.experiment_id == experiment_id]
    if not found:
        msg = f"experiment {experiment_id!r} is not defined (see `bandit-stream experiment list`)"
        raise ExperimentError(msg)
    experiment = found[0]
    store = await StateStore.connect(settings.database_dsn, size=1)
    try:
        snap = await store.current_snapshot(experiment_id, experiment.variant_ids)
    finally:
        await store.close()
    names = {v: n for v, n in zip(experiment.variant_ids, experiment.variant_names, strict=True)}
    return build_insights(
        experiment_id,
        experiment.variant_ids,
        snap.snapshot,
        now=datetime.now(UTC),
        snapshot_version=snap.version,
        variant_names={v: n for v, n in names.items() if n},
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    from streams.analytics.render import plot, render_table

    documents, history, computed = asyncio.run(load(settings, args.experiment_id))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(documents, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        if computed:
            print(
                "no insights published yet for this experiment (no worker has reported on it); "
                "computed now from the state of record:\n"
            )
        print(render_table(documents))
    if args.plot is not None:
        plot(documents, history, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
