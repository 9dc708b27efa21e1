"""The command line of `bench pipeline`, and its bounds checked before anything starts."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from streams.bench.pipeline.progress import BenchError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--visits",
        type=int,
        default=100_000,
        help="visits of the backlog (each with an exposure, ~5%% with a conversion); long "
        "enough that the worker's start and the ~2 s by which counting trails deciding do "
        "not dominate the time",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=2_000.0,
        help="offered visits/s of the latency measurement",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="seconds of offered load of the latency measurement",
    )
    parser.add_argument(
        "--client-visits",
        type=int,
        default=20_000,
        help="visits decided in process by the client (plus a tenth with new user agents)",
    )
    parser.add_argument(
        "--http-rate",
        type=float,
        default=1_000.0,
        help="offered POST /decide requests/s (one visit each)",
    )
    parser.add_argument(
        "--http-duration",
        type=float,
        default=10.0,
        help="seconds of offered POST /decide load",
    )
    parser.add_argument(
        "--keep-services",
        action="store_true",
        help="leave the local Kafka and Postgres running if this run started them",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object on stdout (progress and table on stderr)",
    )
    parser.add_argument(
        "--skip-references",
        action="store_true",
        help="skip the plain aiokafka loop and the naive faust app (quick runs)",
    )


@dataclass(frozen=True)
class Options:
    visits: int
    rate: float
    duration: float
    json: bool
    skip_references: bool
    client_visits: int = 20_000
    http_rate: float = 1_000.0
    http_duration: float = 10.0
    keep_services: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        opts = cls(
            visits=int(args.visits),
            rate=float(args.rate),
            duration=float(args.duration),
            json=bool(args.json),
            skip_references=bool(args.skip_references),
            client_visits=int(args.client_visits),
            http_rate=float(args.http_rate),
            http_duration=float(args.http_duration),
            keep_services=bool(args.keep_services),
        )
        if opts.visits < 20:
            msg = "--visits must be at least 20"
            raise BenchError(msg)
        if not (0 < opts.rate <= 50_000) or not (0.5 <= opts.duration <= 600):
            msg = "--rate must be in (0, 50000] visits/s and --duration in [0.5, 600] s"
            raise BenchError(msg)
        if opts.rate * opts.duration < 20:
            msg = "--rate × --duration must offer at least 20 visits"
            raise BenchError(msg)
        if not 20 <= opts.client_visits <= 1_000_000:
            msg = "--client-visits must be in [20, 1000000]"
            raise BenchError(msg)
        if not (0 < opts.http_rate <= 5_000) or not (0.5 <= opts.http_duration <= 120):
            msg = "--http-rate must be in (0, 5000] requests/s and --http-duration in [0.5, 120] s"
            raise BenchError(msg)
        if opts.http_rate * opts.http_duration < 20:
            msg = "--http-rate × --http-duration must offer at least 20 requests"
            raise BenchError(msg)
        return opts
