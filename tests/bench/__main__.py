"""`python -m tests.bench` (what `make bench` runs): how much the router costs on top of a backend.

A fake Ollama that answers from precomputed bytes (tests/bench/fast_backend.py) and the real
router run as separate processes on their own CPUs (see `CpuPlan`). Every figure is measured
twice with the same client code, directly against the backend and through the router, and the
two are interleaved round by round (alternating which goes first) so that the noise of a shared
machine falls on both alike; the table shows medians over the rounds.

Options: `--quick` (a few seconds, to smoke-test the harness), `--json PATH` (default
bench-results/bench-<timestamp>.json). Exits 0 when the run completed, whatever the marks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import uvloop

from . import clients, report
from .clients import Target
from .processes import REPO, Child, Children, CpuPlan, free_port, plan_cpus, raise_nofile_limit, wait_until_serving
from .routing import measure_routing
from .wrk import run_wrk


@dataclass(frozen=True)
class Settings:
    """Sizes and durations of every phase. The defaults take about a minute and a half."""

    rounds: int = 3
    warmup_requests: int = 300
    latency_requests: int = 2000
    wrk_seconds: float = 5
    relay_streams: int = 8
    relay_seconds: float = 3
    ttfb_streams: int = 200
    gap_streams: int = 4
    gap_chunks: int = 50
    token_delay: float = 0.02
    memory_streams: int = 1000
    memory_delay: float = 0.5
    memory_hold: float = 2
    routing_iterations: int = 20_000


QUICK = Settings(rounds=1, warmup_requests=50, latency_requests=300, wrk_seconds=1, relay_seconds=0.5,
                 ttfb_streams=20, gap_chunks=10, memory_streams=200, memory_hold=0.5, routing_iterations=2000)

Measure = Callable[[Target], Awaitable[dict[str, float]]]
"""One measurement against one target, returning named numbers."""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def brief(result: dict[str, float]) -> str:
    return ", ".join(f"{key}={value:,.3f}" for key, value in result.items())


async def with_router_cpu(router: Child, run: Awaitable[dict[str, float]]) -> dict[str, float]:
    """The result of `run`, plus how busy it kept the router's CPU (100 = one core saturated)."""

    cpu, wall = router.cpu_seconds(), time.perf_counter()
    result = await run
    return {**result, "router_cpu_pct": 100 * (router.cpu_seconds() - cpu) / (time.perf_counter() - wall)}


async def interleaved(name: str, rounds: int, targets: tuple[Target, Target], router: Child,
                      measure: Measure) -> dict:
    """Run `measure` on each target `rounds` times, alternating which goes first (ABBA...), so
    slow drift (another tenant, thermal state) does not favour one side. Medians per target."""

    runs: dict[str, list[dict[str, float]]] = {target.name: [] for target in targets}
    for i in range(rounds):
        for target in targets if i % 2 == 0 else targets[::-1]:
            run = measure(target)
            result = await (with_router_cpu(router, run) if target.name == "router" else run)
            runs[target.name].append(result)
            say(f"  {name} [{i + 1}/{rounds}] {target.name:6}: {brief(result)}")
    router.check_alive()
    return {**{target: median_of(results) for target, results in runs.items()}, "rounds": runs}


def client_session() -> aiohttp.ClientSession:
    """No connection limit (the memory phase holds 1,000 streams) and no total timeout."""

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=60))


async def start_servers(children: Children) -> tuple[Child, Target, Target]:
    """The fake backend, then the router in front of it; both serving the bench model."""

    backend_port, router_port = free_port(), free_port()
    direct = Target("direct", "127.0.0.1", backend_port)
    routed = Target("router", "127.0.0.1", router_port)
    await wait_until_serving(children.start_backend(backend_port), direct.url)
    router = children.start_router(router_port, backend_port)
    await wait_until_serving(router, routed.url)
    return router, direct, routed


async def warm_up(session: aiohttp.ClientSession, targets: tuple[Target, Target], settings: Settings) -> None:
    """Before anything is timed: open the router's upstream connections (all 64 that the wrk
    phase needs) and let both servers reach their steady state."""

    for target in targets:
        await clients.sequential_latency(target, settings.warmup_requests)
        await clients.first_chunk_latency(session, target, 5)
        await run_wrk(target.chat_url, clients.WHOLE_BODY, seconds=1)


def interleaved_phases(settings: Settings, session: aiohttp.ClientSession) -> list[tuple[str, str, Measure]]:
    """(result key, description, measurement) of every direct-vs-routed phase, in running order."""

    s = settings
    return [
        ("latency_c1", "non-streamed chat, concurrency 1 (sequential, one kept-alive connection)",
         lambda t: clients.sequential_latency(t, s.latency_requests)),
        ("throughput_c64", "non-streamed chat, concurrency 64 (wrk -c 64 -t 2)",
         lambda t: run_wrk(t.chat_url, clients.WHOLE_BODY, seconds=s.wrk_seconds)),
        ("relay", f"streamed chat, 256 chunks, {s.relay_streams} concurrent streams",
         lambda t: clients.relay_rate(session, t, s.relay_streams, s.relay_seconds)),
        ("ttfb", "streamed chat, 256 chunks, time to first chunk (sequential streams)",
         lambda t: clients.first_chunk_latency(session, t, s.ttfb_streams)),
        ("gaps", f"streamed chat paced at {s.token_delay * 1000:g} ms per chunk, {s.gap_streams} streams",
         lambda t: clients.chunk_gaps(session, t, s.gap_streams, s.gap_chunks, s.token_delay)),
    ]


async def measure_everything(settings: Settings, children: Children) -> dict:
    """Every phase, in an order where each one leaves the next a quiet machine: the in-process
    routing cost before any server runs, idle memory before any load, 1,000 streams last."""

    say("routing decision, in-process (50 backends × 100 models)")
    results: dict = {"routing": {"direct": None, "router": await measure_routing(settings.routing_iterations)}}
    say(f"  {brief(results['routing']['router'])}")

    router, direct, routed = await start_servers(children)
    await asyncio.sleep(0.5)
    results["rss_idle"] = {"direct": None, "router": {"mb": router.rss_mb()}}
    say(f"router serving; idle RSS {results['rss_idle']['router']['mb']:.1f} MB")

    async with client_session() as session:
        await warm_up(session, (direct, routed), settings)
        for key, description, measure in interleaved_phases(settings, session):
            say(description)
            results[key] = await interleaved(key, settings.rounds, (direct, routed), router, measure)
        say(f"router memory with {settings.memory_streams} open streams ({settings.memory_delay:g} s per chunk)")
        held = await clients.hold_streams(session, routed, settings.memory_streams, settings.memory_delay,
                                          settings.memory_hold, router.rss_mb)
        results["rss_streams"] = {"direct": None, "router": held}
        say(f"  {brief(held)}")
        router.check_alive()
    return results


async def run(settings: Settings, children: Children) -> dict:
    """The measurements, cancelled cleanly by SIGTERM as by Ctrl-C."""

    task = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await measure_everything(settings, children)


def environment(cpus: CpuPlan) -> dict:
    return {
        "cpus": os.cpu_count(),
        "pinning": cpus.describe(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, to smoke-test the harness")
    parser.add_argument("--json", metavar="PATH", type=Path, help="where to write the results as JSON")
    return parser.parse_args(argv)


def publish(rows: list[report.Row], results: dict, path: Path, meta: dict) -> None:
    """The table on stdout (progress went to stderr), the same and the raw rounds as JSON."""

    print(f"\nnomyo-router bench, {'quick' if meta['quick'] else 'full'} run; {meta['environment']['pinning']}")
    print(report.render_table(rows))
    report.write_json(path, rows, results, meta)
    met, missed = sum(r.passed is True for r in rows), sum(r.passed is False for r in rows)
    say(f"{met} targets met, {missed} missed; results in {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else Settings()
    cpus = plan_cpus()
    if cpus.bench is not None:
        os.sched_setaffinity(0, cpus.bench)
    nofile = raise_nofile_limit()
    if nofile < 2 * settings.memory_streams + 256:
        say(f"warning: RLIMIT_NOFILE hard limit is {nofile}; the memory phase may run out of descriptors")
    say(f"nomyo-router bench ({'quick' if args.quick else 'full'}); {cpus.describe()}")
    started = time.strftime("%Y%m%d-%H%M%S")
    meta = {"started": started, "quick": args.quick, "settings": asdict(settings), "environment": environment(cpus)}
    try:
        with tempfile.TemporaryDirectory(prefix="nomyo-bench-") as workdir, Children(Path(workdir), cpus) as children:
            results = uvloop.run(run(settings, children))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; child processes stopped")
        return 130
    except RuntimeError as exc:  # a server died or misbehaved; its log tail is in the message
        say(f"bench failed: {exc}")
        return 1
    meta["environment"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    context = {"relay_streams": settings.relay_streams, "token_delay_ms": settings.token_delay * 1000,
               "memory_streams": settings.memory_streams}
    path = args.json or REPO / "bench-results" / f"bench-{started}.json"
    publish(report.build_rows(results, context), results, path, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
