"""What a run prints: the table for people, and the JSON object for scripts (`--json`).

The JSON keys are a contract (`tests/integration/test_bench_pipeline.py` checks them); the
table says the same and more, with the notes of the run under it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from streams.bench.pipeline.backlog import PipelineResult
from streams.bench.pipeline.decide_paths import ClientResult, HttpResult
from streams.bench.pipeline.latency import READERS, LatencyResult
from streams.bench.pipeline.options import Options
from streams.bench.pipeline.references import ReferenceResult
from streams.bench.pipeline.traffic import Backlog
from streams.settings import Settings

Row = tuple[str, str, str]  # label, value, comment


@dataclass
class Report:
    settings: Settings
    opts: Options
    backlog: Backlog
    pipeline: PipelineResult
    plain: ReferenceResult | None
    faust: ReferenceResult | None
    latency: LatencyResult
    notes: list[str]
    client: ClientResult
    http: HttpResult

    def as_json(self) -> dict[str, Any]:
        def r(x: float | None, digits: int = 1) -> float | None:
            return None if x is None else round(x, digits)

        faust_eps = self.faust.eps if self.faust else None
        return {
            "pipeline_visits_per_s": r(self.pipeline.visits_per_s),
            "pipeline_eps": r(self.pipeline.eps),
            "baseline_eps": r(self.plain.eps if self.plain else None),
            "faust_reference_eps": r(faust_eps),
            "ratio_to_faust_reference": r(self.pipeline.eps / faust_eps if faust_eps else None, 3),
            "offered_visits_per_s": r(self.latency.offered_per_s),
            "latency_ms": {
                name: {k: round(v, 2) for k, v in self.latency.percentiles(name).items()}
                for name in READERS
            },
            "client": {
                "p50_us": r(self.client.cached()["p50"], 2),
                "p99_us": r(self.client.cached()["p99"], 2),
            },
            "http": {
                "p50_ms": r(self.http.percentiles()["p50"], 3),
                "p99_ms": r(self.http.percentiles()["p99"], 3),
                "requests_per_s": r(self.http.requests_per_s),
            },
        }

    def _backlog_rows(self) -> list[Row]:
        p = self.pipeline

        def ratio(ref: ReferenceResult | None) -> str:
            return f"{p.eps / ref.eps:.2f}" if ref else "-"

        return [
            (
                f"(a) pipeline, 1 worker, backlog of {p.visits:,} visits ({p.events:,} events)",
                "",
                "",
            ),
            ("    visits/s", f"{p.visits_per_s:,.0f}", ""),
            (
                "    events/s (visits + exposures + conversions)",
                f"{p.eps:,.0f}",
                f"{ratio(self.faust)} × faust ref, {ratio(self.plain)} × plain",
            ),
            ("    all decisions on `decisions` after", f"{p.decide_seconds:.2f} s", ""),
            ("    all counts in Postgres after", f"{p.track_seconds:.2f} s", ""),
            ("    conversions attributed", f"{p.attributed:,}", ""),
            ("    worker start → /ready", f"{p.ready_seconds:.1f} s", ""),
        ]

    def _reference_rows(self) -> list[Row]:
        p, plain, faust = self.pipeline, self.plain, self.faust
        if not (plain and faust):
            return [("(b) references skipped (--skip-references)", "", "")]
        return [
            (f"(b) references over the same {self.backlog.events:,} events", "", ""),
            ("    plain aiokafka consume→produce, events/s", f"{plain.eps:,.0f}", ""),
            ("    naive faust agent (Table + send), events/s", f"{faust.eps:,.0f}", ""),
            ("    ratio pipeline_eps / faust_reference_eps", f"{p.eps / faust.eps:.2f}", ""),
            ("    ratio pipeline_eps / plain_loop_eps", f"{p.eps / plain.eps:.3f}", ""),
        ]

    def _latency_rows(self) -> list[Row]:
        lat = self.latency
        rows: list[Row] = [
            (
                f"(c) latency, {lat.offered_per_s:,.0f} visits/s offered for "
                f"{self.opts.duration:g} s (first {lat.warmup_s:g} s not measured)",
                "",
                "",
            )
        ]
        for name, level in READERS.items():
            pct = lat.percentiles(name)
            rows.append(
                (
                    f"    visit → decision, {level}, p50 / p95 / p99",
                    f"{pct['p50']:.1f} / {pct['p95']:.1f} / {pct['p99']:.1f} ms",
                    f"{len(lat.samples[name]):,}/{lat.measured:,} decided",
                )
            )
        return [
            *rows,
            ("    decisions read per s (uncommitted)", f"{lat.decided_per_s:,.0f}", ""),
            (
                "    client exposures / conversions sent",
                f"{lat.exposures:,} / {lat.conversions:,}",
                "",
            ),
            (
                "    … counted in Postgres after the run",
                f"{lat.tracked_exposures:,} / {lat.tracked_conversions:,}",
                "",
            ),
            ("    sender's worst lag behind schedule", f"{lat.max_sender_lag_ms:.1f} ms", ""),
        ]

    def _decide_path_rows(self) -> list[Row]:
        c, h = self.client, self.http
        cached, fresh, web = c.cached(), c.uncached(), h.percentiles()
        return [
            ("(d) the other ways to decide, against one worker", "", ""),
            (
                f"    in process (DecisionClient), {c.decisions:,} visits, decisions/s",
                f"{c.per_s:,.0f}",
                f"{c.acknowledged:,} published (warm-up and new-UA ones too)",
            ),
            (
                "    … per decide(), cached user agent, p50 / p95 / p99",
                f"{cached['p50']:.1f} / {cached['p95']:.1f} / {cached['p99']:.1f} µs",
                "",
            ),
            (
                "    … per decide(), new user agent, p50 / p95 / p99",
                f"{fresh['p50']:.1f} / {fresh['p95']:.1f} / {fresh['p99']:.1f} µs",
                f"{len(c.uncached_us):,} visits",
            ),
            (
                f"    POST /decide, {h.offered_per_s:,.0f} requests/s offered for "
                f"{self.opts.http_duration:g} s, answered/s",
                f"{h.requests_per_s:,.0f}",
                f"{h.answered:,}/{h.sent:,} answered, {h.failed:,} failed",
            ),
            (
                f"    … request → decision, p50 / p95 / p99 (first {h.warmup_s:g} s not measured)",
                f"{web['p50']:.2f} / {web['p95']:.2f} / {web['p99']:.2f} ms",
                "",
            ),
        ]

    def table(self) -> str:
        s = self.settings
        rows = self._backlog_rows() + self._reference_rows() + self._latency_rows()
        rows += self._decide_path_rows()
        width = max(len(r[0]) for r in rows) + 2
        vwidth = max(len(r[1]) for r in rows) + 2
        head = (
            f"bench pipeline — Kafka {s.bootstrap_servers}, {s.partitions} partitions, "
            f"commit interval {s.commit_interval_s:g} s, "
            f"{os.cpu_count()} CPUs"
        )
        lines = [head, "-" * len(head)]
        lines += [f"{a:<{width}}{b:>{vwidth}}  {c}".rstrip() for a, b, c in rows]
        lines += [f"NOTE: {note}" for note in self.notes]
        return "\n".join(lines)
