"""The benchmarks behind `bandit-stream bench …`, one module (or package) each, and the
argument type their command lines share."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: a whole number ≥ 1, refused with its value otherwise."""
    value = int(text)
    if value < 1:
        message = f"must be a positive integer, got {text}"
        raise argparse.ArgumentTypeError(message)
    return value
