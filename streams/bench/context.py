"""`bandit-stream bench context`: the cost of `extract_context` per visit.

Two cases, each timed call by call (``time.perf_counter_ns``) after a warm-up:

* cached: the same visit again and again, so the user agent and the referrer host
  are answered from their memo caches (what most traffic costs: a few hundred UA
  strings make most visits).
* uncached: every call carries a user-agent string never seen before (one of the
  templates below with a unique build number), so ua-parser runs and our rules with
  it; the referrer host and the landing URL's query are parsed as well.

Columns: p50 and p99 of one call in microseconds, by the wall clock (what a visit
waits) and by the thread's CPU clock (what the call costs, without the time the OS gave
to other processes: on a busy machine a 50 µs call is preempted often enough to make
the wall-clock p99 a measure of the machine); each the median over ``--rounds`` rounds
of ``--calls`` calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

from streams.bench import positive_int
from streams.core.context import extract_context

# Templates of real UA formats ("{n}" becomes a unique build number): the in-app browsers,
# phones, tablets, desktops and crawlers the classifier distinguishes.
TEMPLATES: tuple[str, ...] = (
    "Mozilla/5.0 (Linux; Android 13; SM-A546B Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/128.0.6613.{n} Mobile Safari/537.36 Instagram "
    "415.0.0.36.76 Android (33/13; 450dpi; 1080x2340; samsung; SM-A546B; a54x; s5e8835; en_GB; "
    "773396124)",
    "Instagram 415.0.0.{n}.76 Android (33/13; 420dpi; 1080x2400; Xiaomi; 2201117TG; spes; qcom; "
    "en_US; 773396124)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/452.0.0.{n};FBBV/577463914;FBDV/iPhone14,5;"
    "FBMD/iPhone;FBSN/iOS;FBSV/17.4;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.{n}.82 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.{n}",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 EdgiOS/124.0.2478.{n} Mobile/15E148 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.{n}.0 Safari/537.36 Edg/124.0.2478.67",
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.{n}.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/124.0.{n}.201 Mobile Safari/537.36 (compatible; Google-InspectionTool/1.0;)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Mobile/15E148 musical_ly_34.1.{n} JsSdk/2.0 NetType/WIFI Channel/App Store "
    "ByteLocale/en Region/US WKWebView/1 BytedanceWebview/d8a21c6",
)
CONTEXT: Mapping[str, object] = {
    "referrer": "https://l.instagram.com/",
    "landing_url": "https://shop.example/p/1?utm_campaign=spring&fbclid=IwAR2x",
    "country": "FR",
    "language": "fr-FR",
    "timezone_offset_minutes": 120,
    "screen_width": 393,
    "session": {"pages_viewed": 1, "time_seconds": 4.2, "is_returning": False},
}
AT = datetime(2024, 6, 8, 17, 30, tzinfo=UTC)
WARMUP = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calls", type=positive_int, default=10_000, help="timed calls per case and round"
    )
    parser.add_argument("--rounds", type=positive_int, default=5, help="rounds (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _time_calls(
    make_context: Callable[[int], Mapping[str, object]], calls: int
) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and thread-CPU nanoseconds of each of ``calls`` calls (contexts prebuilt)."""
    contexts = [make_context(i) for i in range(WARMUP + calls)]
    for ctx in contexts[:WARMUP]:
        extract_context(ctx, AT)
    wall = np.empty(calls, dtype=np.int64)
    cpu = np.empty(calls, dtype=np.int64)
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    for i, ctx in enumerate(contexts[WARMUP:]):
        start, cpu_start = clock(), cpu_clock()
        extract_context(ctx, AT)
        cpu[i] = cpu_clock() - cpu_start
        wall[i] = clock() - start
    return wall, cpu


def run(calls: int, rounds: int = 5) -> dict[str, dict[str, float | int]]:
    """{case: {p50_us, p99_us, cpu_p50_us, cpu_p99_us, calls, rounds}}, cached and uncached."""
    cached_ua = TEMPLATES[0].format(n=1)

    def cached(_: int) -> Mapping[str, object]:
        return {**CONTEXT, "user_agent": cached_ua}

    percentiles: dict[str, list[np.ndarray]] = {"cached": [], "uncached": []}
    for round_ in range(rounds):
        first = 1_000_000 + round_ * (WARMUP + calls)  # every uncached UA is new

        def uncached(i: int, first: int = first) -> Mapping[str, object]:
            template = TEMPLATES[i % len(TEMPLATES)]
            return {**CONTEXT, "user_agent": template.format(n=first + i)}

        for name, make in (("cached", cached), ("uncached", uncached)):
            wall, cpu = _time_calls(make, calls)
            percentiles[name].append(
                np.concatenate([np.percentile(wall, [50, 99]), np.percentile(cpu, [50, 99])])
                / 1_000
            )
    results: dict[str, dict[str, float | int]] = {}
    for name, rows in percentiles.items():
        medians = np.median(np.array(rows), axis=0)
        keys = ("p50_us", "p99_us", "cpu_p50_us", "cpu_p99_us")
        results[name] = {key: round(float(v), 2) for key, v in zip(keys, medians, strict=True)}
        results[name] |= {"calls": calls, "rounds": rounds}
    return results


def main(args: argparse.Namespace) -> int:
    results = run(args.calls, args.rounds)
    if args.json:
        payload: dict[str, Any] = {"cases": results, "python": platform.python_version()}
        sys.stdout.write(json.dumps(payload) + "\n")
        return 0
    print(
        f"extract_context per visit (Python {platform.python_version()}; µs per call, "
        f"median of {args.rounds} rounds of {args.calls} calls)"
    )
    keys = ("p50_us", "p99_us", "cpu_p50_us", "cpu_p99_us")
    print(f"{'case':<10}" + "".join(f" {key:>11}" for key in keys))
    for name, row in results.items():
        print(f"{name:<10}" + "".join(f" {row[key]:>11.2f}" for key in keys))
    return 0
