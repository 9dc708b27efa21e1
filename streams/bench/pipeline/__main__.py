"""`python -m streams.bench.pipeline [--json]`: the benchmark without the `bandit-stream` CLI."""

from __future__ import annotations

import argparse
import sys

from streams.bench import pipeline

parser = argparse.ArgumentParser(
    prog="python -m streams.bench.pipeline",
    description=pipeline.__doc__.split("\n")[0] if pipeline.__doc__ else None,
)
pipeline.add_arguments(parser)
sys.exit(pipeline.main(parser.parse_args()))
