"""Concurrency-64 throughput with `wrk`: a C load generator, so that the client is not the
bottleneck. The Lua script beside this file posts the body it finds in $BENCH_BODY."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

SCRIPT = Path(__file__).with_name("chat.lua")
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
REQUESTS_PER_SEC = re.compile(r"^Requests/sec:\s*([\d.]+)", re.M)
PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    return path


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/sec, the latency percentiles (ms) and the error counts from `wrk --latency`."""

    rate = REQUESTS_PER_SEC.search(output)
    if rate is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    result = {"requests_per_s": float(rate.group(1))}
    for pct, value, unit in PERCENTILE.findall(output):
        result[f"p{pct}_ms"] = float(value) * UNITS_MS[unit]
    non_2xx = NON_2XX.search(output)
    result["non_2xx"] = float(non_2xx.group(1)) if non_2xx else 0.0
    sockets = SOCKET_ERRORS.search(output)
    result["socket_errors"] = float(sum(int(n) for n in sockets.groups())) if sockets else 0.0
    return result


async def run_wrk(url: str, body: bytes, *, connections: int = 64, threads: int = 2,
                  seconds: float = 5) -> dict[str, float]:
    """One wrk run against `url`; the process is killed if the bench is interrupted."""

    argv = [wrk_path(), "-c", str(connections), "-t", str(threads), "-d", f"{seconds:g}s", "--latency",
            "-s", str(SCRIPT), url]
    env = {**os.environ, "BENCH_BODY": body.decode()}
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        output, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{output.decode(errors='replace')}")
    return parse_wrk(output.decode())
