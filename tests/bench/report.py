"""Turn measured numbers into the one table the bench prints (and the JSON it writes).

The targets live here, as data, so a change of target is one line. Each rule compares either the
router's figure alone (memory, routing cost, throughput floors) or what the router adds on top
of the same measurement made directly against the backend.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

ADDED_MAX = "added<="  # router - direct <= limit
ADDED_ABS = "|added|<="  # |router - direct| <= limit
ROUTER_MIN = "router>="
ROUTER_MAX = "router<"
INFO = "info"


@dataclass(frozen=True)
class Check:
    """One row of the table: where its numbers are in the results, and its target."""

    label: str
    section: str
    key: str
    unit: str
    rule: str
    limit: float
    target: str


CHECKS = (
    Check("chat c=1 latency p50", "latency_c1", "p50_ms", "ms", ADDED_MAX, 0.5, "added ≤ 0.5 ms"),
    Check("chat c=1 latency p99", "latency_c1", "p99_ms", "ms", ADDED_MAX, 2.0, "added ≤ 2 ms"),
    Check("chat c=64 throughput (wrk)", "throughput_c64", "requests_per_s", "req/s", ROUTER_MIN, 3000,
          "≥ 3,000 req/s"),
    Check("chat c=64 latency p99 (wrk)", "throughput_c64", "p99_ms", "ms", ADDED_MAX, 5.0, "added ≤ 5 ms"),
    Check("router CPU busy during c=64", "throughput_c64", "router_cpu_pct", "%", INFO, 0, "—"),
    Check("stream relay, {relay_streams} streams × 256", "relay", "chunks_per_s", "chunks/s", ROUTER_MIN, 40_000,
          "≥ 40,000 chunks/s"),
    Check("router CPU busy during stream relay", "relay", "router_cpu_pct", "%", INFO, 0, "—"),
    Check("stream time to first chunk p50", "ttfb", "p50_ms", "ms", ADDED_MAX, 0.5, "added ≤ 0.5 ms"),
    Check("stream time to first chunk p99", "ttfb", "p99_ms", "ms", INFO, 0, "—"),
    Check("inter-chunk gap mean @ {token_delay_ms:g} ms", "gaps", "mean_ms", "ms", ADDED_ABS, 0.5,
          "added ≈ 0 (±0.5 ms)"),
    Check("inter-chunk gap p99 @ {token_delay_ms:g} ms", "gaps", "p99_ms", "ms", INFO, 0, "—"),
    Check("RSS idle after startup", "rss_idle", "mb", "MB", ROUTER_MAX, 60, "< 60 MB"),
    Check("RSS with {memory_streams:,} open streams", "rss_streams", "max", "MB", ROUTER_MAX, 150, "< 150 MB"),
    Check("routing: acquire+release, 50×100", "routing", "acquire_release_us", "µs", ROUTER_MAX, 20, "< 20 µs"),
    Check("routing: decide(model), 50×100", "routing", "decision_us", "µs", ROUTER_MAX, 20, "< 20 µs"),
)


@dataclass(frozen=True)
class Row:
    metric: str
    unit: str
    direct: float | None
    router: float
    added: float | None
    ratio: float | None
    target: str
    passed: bool | None


def evaluate(check: Check, results: dict, context: dict) -> Row:
    section = results[check.section]
    router = section["router"][check.key]
    direct = section["direct"].get(check.key) if section.get("direct") else None
    added = router - direct if direct is not None else None
    ratio = router / direct if direct else None
    passed = {
        ADDED_MAX: lambda: added <= check.limit,
        ADDED_ABS: lambda: abs(added) <= check.limit,
        ROUTER_MIN: lambda: router >= check.limit,
        ROUTER_MAX: lambda: router < check.limit,
        INFO: lambda: None,
    }[check.rule]()
    return Row(check.label.format(**context), check.unit, direct, router, added, ratio, check.target, passed)


def build_rows(results: dict, context: dict) -> list[Row]:
    return [evaluate(check, results, context) for check in CHECKS]


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("req/s", "chunks/s"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "%":
        return f"{value:.0f} %"
    return f"{value:.1f} {unit}"


def compared(row: Row) -> str:
    """What the router adds for times, the router/direct ratio for rates."""

    if row.direct is None:
        return "—"
    if row.unit in ("req/s", "chunks/s"):
        return f"{row.ratio:.2f}×"
    return f"{row.added:+.3f} {row.unit}"


def mark(row: Row) -> str:
    return {True: "PASS", False: "FAIL", None: "info"}[row.passed]


def render_table(rows: list[Row]) -> str:
    header = ("metric", "direct", "router", "ratio/added", "target", "")
    cells = [header] + [(r.metric, fmt(r.direct, r.unit), fmt(r.router, r.unit), compared(r), r.target, mark(r))
                        for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]

    def line(values: tuple[str, ...]) -> str:
        return " | ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths,
                                                                                                strict=True)))

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(c) for c in cells[1:])])


def write_json(path: Path, rows: list[Row], results: dict, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**meta, "rows": [asdict(r) for r in rows], "results": results}
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
