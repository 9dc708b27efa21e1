"""`bandit-stream experiment create | list | show | pause | resume | stop`."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import yaml

from streams.errors import ExperimentError
from streams.experiments import new_experiment_document
from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="define an experiment (flags or --file)")
    create.add_argument("experiment_id", nargs="?", help="id (ignored with --file)")
    create.add_argument("--file", type=Path, help="a JSON or YAML definition document")
    create.add_argument("--variants", help="comma-separated variant ids, e.g. a,b,c")
    create.add_argument("--name")
    create.add_argument("--features", default="", help="context features, e.g. device,source")
    create.add_argument(
        "--policy", default="pooled", choices=["uniform", "global", "segment", "pooled"]
    )
    create.add_argument(
        "--exploration", default="default", choices=["default", "aggressive", "conservative"]
    )
    create.add_argument("--attribution-window", type=int, default=86_400, metavar="SECONDS")
    create.add_argument("--holdout", type=float, default=0.0, metavar="SHARE")
    create.add_argument("--no-sticky", action="store_true")
    actions.add_parser("list", help="every experiment, one line each")
    for name in ("show", "pause", "resume", "stop"):
        action = actions.add_parser(name, help=f"{name} one experiment")
        action.add_argument("experiment_id")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from streams.sink.experiments import load_experiments, save_experiment, set_status

    if args.action == "create":
        experiment = asyncio.run(save_experiment(settings, _definition(args)))
        print(
            f"created {experiment.experiment_id}: variants {', '.join(experiment.variant_ids)}, "
            f"policy {experiment.policy_name}, segments by "
            f"{', '.join(experiment.context_features) or 'nothing (one segment)'}"
        )
    elif args.action == "list":
        for e in asyncio.run(load_experiments(settings)):
            print(
                f"{e.experiment_id:<28} {e.status:<8} v{e.version:<3} {e.policy_name:<8} "
                f"variants={','.join(e.variant_ids)} features={','.join(e.context_features)}"
            )
    elif args.action == "show":
        found = [
            e
            for e in asyncio.run(load_experiments(settings))
            if e.experiment_id == args.experiment_id
        ]
        if not found:
            msg = f"no experiment {args.experiment_id!r}"
            raise ExperimentError(msg)
        print(json.dumps(found[0].to_document(), indent=2))
    else:
        status = {"pause": "paused", "resume": "running", "stop": "stopped"}[args.action]
        changed = asyncio.run(set_status(settings, args.experiment_id, status))
        print(f"{changed.experiment_id} is {changed.status} (version {changed.version})")
    return 0


def _definition(args: argparse.Namespace) -> dict[str, Any]:
    if args.file is not None:
        loaded = yaml.safe_load(args.file.read_text())
        if not isinstance(loaded, dict):
            msg = f"{args.file} must hold one JSON/YAML object"
            raise ExperimentError(msg)
        return loaded
    if not args.experiment_id or not args.variants:
        msg = "give an experiment id and --variants a,b[,…] (or --file definition.yaml)"
        raise ExperimentError(msg)
    return new_experiment_document(
        args.experiment_id,
        [v.strip() for v in args.variants.split(",") if v.strip()],
        name=args.name,
        context_features=[f.strip() for f in args.features.split(",") if f.strip()],
        policy={"name": args.policy, "exploration": args.exploration},
        attribution_window_seconds=args.attribution_window,
        holdout_share=args.holdout,
        sticky=not args.no_sticky,
    )
