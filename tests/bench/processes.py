"""The benchmark's child processes: the fake backend and the router, on their own CPUs.

Both run as separate processes (as in production, the router has a whole interpreter and event
loop to itself). They are started in their own session so a Ctrl-C in the terminal reaches only
the bench, which then stops them itself, and `Children` stops them however the bench ends.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from .fast_backend import MODEL

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs each party may use; None means "leave it to the scheduler".

    With two CPUs the router gets CPU 0 to itself and the fake backend and the load generator
    share CPU 1. Direct and routed runs then see the same client+backend contention, and the
    only difference between them is the router (on its own core, as a production router has).
    With three or more, the load generator gets the rest to itself."""

    router: frozenset[int] | None
    backend: frozenset[int] | None
    bench: frozenset[int] | None

    def describe(self) -> str:
        if self.router is None:
            return "not pinned (fewer than 2 CPUs)"
        return (f"router on CPU {_cpus(self.router)}, backend on CPU {_cpus(self.backend)}, "
                f"load generator on CPU {_cpus(self.bench)}")


def _cpus(cpus: frozenset[int] | None) -> str:
    return ",".join(str(c) for c in sorted(cpus or ()))


def plan_cpus() -> CpuPlan:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return CpuPlan(None, None, None)
    rest = frozenset(cpus[2:]) or frozenset({cpus[1]})
    return CpuPlan(router=frozenset({cpus[0]}), backend=frozenset({cpus[1]}), bench=rest)


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit. Children inherit it: the router needs two sockets
    per open stream (client and upstream) and the backend one, beyond the usual 1,024."""

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size from /proc (VmRSS, in MB of 2**20 bytes)."""

    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Child:
    """One child process with its combined output in a log file (shown if it dies)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, cpus: frozenset[int] | None):
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if cpus is not None:
            os.sched_setaffinity(self.proc.pid, cpus)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (from /proc/PID/stat), to tell how busy a run kept it."""

        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within 3 s (the router drains open streams)."""

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Children:
    """Owns every child process and stops them all on exit, even on Ctrl-C or an error."""

    def __init__(self, workdir: Path, cpus: CpuPlan):
        self.workdir = workdir
        self.cpus = cpus
        self._children: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc_info) -> None:
        for child in reversed(self._children):
            child.stop()

    def spawn(self, name: str, argv: list[str], cpus: frozenset[int] | None) -> Child:
        child = Child(name, argv, self.workdir / f"{name}.log", cpus)
        self._children.append(child)
        return child

    def start_backend(self, port: int) -> Child:
        argv = [sys.executable, "-m", "tests.bench.fast_backend", "--port", str(port), "--chunks", "256"]
        return self.spawn("backend", argv, self.cpus.backend)

    def start_router(self, port: int, backend_port: int) -> Child:
        config = self.workdir / "router.yaml"
        config.write_text(router_config(port, backend_port))
        argv = [sys.executable, "-m", "nomyo", "--config", str(config)]
        return self.spawn("router", argv, self.cpus.router)


def router_config(port: int, backend_port: int) -> str:
    return (f"listen: 127.0.0.1:{port}\n"
            f"endpoints:\n  - http://127.0.0.1:{backend_port}\n"
            "max_concurrent_connections: 1000\n"
            "queue_timeout: 30\n"
            "log_level: warning\n")


async def wait_until_serving(child: Child, url: str, timeout: float = 20.0) -> None:
    """Poll `GET url/api/tags` until it lists the bench model: for the router that means it has
    polled the backend and will route, not merely that it listens."""

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            child.check_alive()
            try:
                async with session.get(f"{url}/api/tags") as resp:
                    if resp.status == 200 and MODEL.encode() in await resp.read():
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} not serving at {url} after {timeout:g}s:\n{child.log_tail()}")
            await asyncio.sleep(0.05)
