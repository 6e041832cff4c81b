"""Shared fixtures: real fake backends on 127.0.0.1, and the real router app on a real port.

Every router started here is checked when its test ends (`RunningRouter.settled`): no reserved
slot, nobody queued, no request still being handled, no upstream connection still held, and no
token record left unwritten.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import pytest

from nomyo.app import build_app
from nomyo.config import Config, build_config
from nomyo.keys import ROUTER
from nomyo.router import Router
from tests.daemon_process import DaemonProcess
from tests.fakes.ollama_backend import FakeOllama


async def eventually(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until `predicate()` holds (state that settles asynchronously, e.g. a freed slot)."""

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await asyncio.sleep(0.005)


@dataclass
class RunningRouter:
    url: str
    router: Router
    config: Config

    @property
    def ledger(self):
        return self.router.ledger

    def backend(self, name: str):
        return self.router.fleet.backends[name]

    def leaks(self) -> list[str]:
        """What is still held right now; [] when the router is at rest."""

        router = self.router
        found = []
        if self.ledger.total_inflight():
            found.append(f"reserved slots {self.ledger.usage()['usage_counts']}")
        if self.ledger.queued:
            found.append(f"{self.ledger.queued} request(s) queued")
        if router.active_requests:
            found.append(f"{router.active_requests} request(s) still being handled (tokens not accounted)")
        # aiohttp keeps the connections a response still uses in `_acquired` (a poll holds one
        # for a moment; an upstream answer that was never released or closed holds one forever).
        acquired = len(router.session.connector._acquired) if router.session is not None else 0
        if acquired:
            found.append(f"{acquired} upstream connection(s) still open")
        if router.usage.pending:
            found.append(f"{router.usage.pending} token record(s) (minute buckets) not written")
        return found

    async def settled(self, timeout: float = 5.0) -> None:
        """No slot reserved, nobody waiting, no request still being handled (so every request's
        tokens were accounted), no upstream connection held, and every token record written.
        In-flight handlers, polls and the usage writer may need a moment: all must hold at once
        within `timeout`."""

        deadline = time.monotonic() + timeout
        while found := self.leaks():
            if time.monotonic() > deadline:
                raise AssertionError(f"router not settled after {timeout}s: {'; '.join(found)}")
            await asyncio.sleep(0.005)


@pytest.fixture(autouse=True)
def _usage_db_in_tmp(tmp_path, monkeypatch):
    """Routers (and daemons) a test starts keep their token counts in its tmp_path, not /var/lib."""

    monkeypatch.setenv("NOMYO_ROUTER_DB_PATH", str(tmp_path / "usage.db"))


@pytest.fixture
async def fakes(backends):
    """`await fakes(name=..., models=[...], ...)` starts a FakeOllama (which, like Ollama on
    loopback, answers 403 to a foreign Host header); all are stopped at the end."""

    async def start(name: str = "fake", **kwargs) -> FakeOllama:
        kwargs.setdefault("strict_host", True)
        return await backends(FakeOllama(name=name, **kwargs))

    return start


def router_config(backends, **settings) -> Config:
    """A Config for the given fakes: each as a named endpoint, fast polling for tests."""

    slots = settings.pop("slots", 1)
    endpoints = []
    for backend in backends:
        if isinstance(backend, dict):
            endpoints.append(backend)
        else:
            endpoints.append({"name": backend.name, "url": backend.url, "max_concurrent_connections": slots})
    document = {"endpoints": endpoints, "poll_interval": 0.2, "poll_timeout": 1.0, "queue_timeout": 10,
                "connect_timeout": 1.0, "flush_interval": 0.05}
    document.update(settings)
    return build_config(document, "test-config.yaml")


@pytest.fixture
async def start_router(aiohttp_server):
    """`await start_router([fake, ...], slots=2, queue_timeout=...)` serves the real app on a port;
    `prepare_app=function` may add to the app (e.g. routes) before it starts."""

    running: list[RunningRouter] = []

    async def start(backends, prepare_app=None, **settings) -> RunningRouter:
        config = router_config(backends, **settings)
        app = build_app(config)
        if prepare_app is not None:
            prepare_app(app)
        # TestServer runs with handler_cancellation=True; like the daemon, it never inflates bodies
        server = await aiohttp_server(app, auto_decompress=False)
        handle = RunningRouter(url=str(server.make_url("")).rstrip("/"), router=app[ROUTER], config=config)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        await handle.settled()


@pytest.fixture
async def daemon(tmp_path):
    """`await daemon(config_text, env=..., prefix=...)` starts the real `nomyo-router` process
    (config in tmp_path, listening on a free port, fast polling) and waits until it listens;
    every one is stopped at the end."""

    started: list[DaemonProcess] = []

    async def start(config_text: str, env: dict[str, str] | None = None, *, prefix: tuple[str, ...] = ()):
        name = "config.yaml" if not started else f"config-{len(started)}.yaml"
        process = DaemonProcess(tmp_path / name, env, prefix)
        started.append(process)
        return await process.start(config_text)

    yield start
    for process in started:
        await process.stop()


@pytest.fixture
async def backends():
    """`await backends(FakeOpenAI(...))` starts any fake server (`start`/`stop`); all are stopped
    at the end."""

    started = []

    async def start(fake):
        await fake.start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session
