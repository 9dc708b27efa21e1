"""`bandit-stream`: one console script, one subcommand per job.

Each subcommand imports what it needs when it runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from streams.errors import BanditStreamError
from streams.settings import Settings, get_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _services(args: argparse.Namespace, settings: Settings) -> int:
    from streams.services import local

    if args.action == "up":
        local.up(settings)
        for line in local.status_lines(settings):
            print(line)
        print('eval "$(bandit-stream services env)" exports these for other tools')
    elif args.action == "down":
        stopped = local.down(settings)
        print(f"stopped: {', '.join(stopped) or 'nothing (none of ours was running)'}")
    elif args.action == "status":
        for line in local.status_lines(settings):
            print(line)
    else:  # env
        print(f"KAFKA_BOOTSTRAP_SERVERS={settings.bootstrap_servers}")
        print(f"DATABASE_URL={settings.database_dsn}")
    return 0


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from streams.sink.migrations import applied_migrations, load_migrations, migrate

    if args.action == "migrate":
        applied = asyncio.run(migrate(settings.database_dsn))
        print(f"applied: {', '.join(applied)}" if applied else "up to date: nothing to apply")
    else:
        done = dict(asyncio.run(applied_migrations(settings.database_dsn)))
        for migration in load_migrations():
            mark = "applied" if migration.version in done else "pending"
            print(f"{migration.name:<40} {mark}")
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from streams.admin import ensure_topics, partition_counts
    from streams.topics import topic_specs

    if args.action == "create":
        created = asyncio.run(ensure_topics(settings))
        print(f"created: {', '.join(created)}" if created else "all topics exist")
    else:
        counts = asyncio.run(partition_counts(settings))
        for spec in topic_specs(settings).values():
            have = counts.get(spec.name)
            state = f"{have} partitions" if have is not None else "missing"
            flags = " compacted" if spec.compacted else ""
            print(f"{spec.name:<32} key={spec.key:<28} {state}{flags}")
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from streams.selfcheck import run_check
    from streams.services import local

    local.up(settings)
    report = asyncio.run(run_check(settings))
    print("bandit-stream check: all good")
    print(report.render())
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    """Create missing topics, then hand over to faust's worker (it owns signals and exit)."""
    from streams.admin import ensure_topics

    asyncio.run(ensure_topics(settings))
    os.environ.setdefault("FAUST_LOOP", "uvloop")  # read by `import faust` (~10 % faster)
    from streams.app import app

    sys.argv = [
        "bandit-stream",
        "worker",
        "-l",
        settings.log_level,
        "--web-host",
        settings.web_host,
        "--web-port",
        str(settings.web_port),
    ]
    app.main()  # faust's CLI reads sys.argv and exits by itself
    return 0


def _experiment(args: argparse.Namespace, settings: Settings) -> int:
    from streams.cli import experiment

    return experiment.main(args, settings)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from streams.cli import report

    return report.main(args, settings)


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams import demo

    return demo.main(args, settings)


BENCHES = {  # name → help; each is the module streams.bench.NAME (add_arguments, main)
    "policies": "bandit policies on simulated traffic",
    "context": "extract_context per visit: cached and uncached p50/p99",
    "learning": "exposure sent → counted in a published allocation: p50/p99",
    "aa": "A/A and A/B runs: false positives and power of the analytics' flags",
    "faults": "the fault model on the real broker and Postgres: lost, double-counted",
    "pipeline": "one worker on the real broker: throughput and latency vs references",
}


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    main: Callable[[argparse.Namespace], int] = importlib.import_module(
        f"streams.bench.{args.bench}"
    ).main
    return main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bandit-stream",
        description="Contextual Thompson-sampling allocation on Kafka (Faust) and Postgres.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    services = commands.add_parser("services", help="local Kafka and Postgres for development")
    services.add_argument("action", choices=["up", "down", "status", "env"])
    services.set_defaults(handler=_services)

    db = commands.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["migrate", "status"])
    db.set_defaults(handler=_db)

    topics = commands.add_parser("topics", help="create or list the service's Kafka topics")
    topics.add_argument("action", choices=["create", "list"])
    topics.set_defaults(handler=_topics)

    check = commands.add_parser(
        "check", help="services up, migrate, topics, a round trip through Kafka and Postgres"
    )
    check.set_defaults(handler=_check)

    demo = commands.add_parser(
        "demo", help="a live run of the whole pipeline on synthetic traffic (about a minute)"
    )
    from streams.demo import add_arguments as demo_arguments

    demo_arguments(demo)
    demo.set_defaults(handler=_demo)

    worker = commands.add_parser("worker", help="run a worker of the pipeline (faust)")
    worker.set_defaults(handler=_worker)

    experiment = commands.add_parser("experiment", help="define and control experiments")
    from streams.cli.experiment import add_arguments as experiment_arguments

    experiment_arguments(experiment)
    experiment.set_defaults(handler=_experiment)

    report = commands.add_parser(
        "report", help="an experiment's latest lift report, anomalies and recommendations"
    )
    from streams.cli.report import add_arguments as report_arguments

    report_arguments(report)
    report.set_defaults(handler=_report)

    bench = commands.add_parser("bench", help="benchmarks that print a table")
    benches = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name, help_ in BENCHES.items():
        module = importlib.import_module(f"streams.bench.{name}")
        module.add_arguments(benches.add_parser(name, help=help_))
    bench.set_defaults(handler=_bench)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "worker":
        # SIGTERM (kill, a supervisor) ends a command as Ctrl-C does: what it started (local
        # services, workers, scratch topics) is stopped on the way out, not orphaned
        signal.signal(signal.SIGTERM, _interrupt)
        # a producer's first send to a topic created a moment ago logs one recovered
        # NotLeaderForPartition warning: noise for a command-line user
        logging.getLogger("aiokafka").setLevel(logging.ERROR)
    handler: Handler = args.handler
    try:
        return handler(args, get_settings())
    except BanditStreamError as exc:
        print(f"bandit-stream {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
