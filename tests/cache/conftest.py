"""Fixtures for the cache's tests: the tiny app on a real port, and a real redis-server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nomyo.cache.cache import ResponseCache
from nomyo.cache.config import CacheConfig
from tests.cache.app import ScriptedBackend, build_cache_app


def cache_config(**settings) -> CacheConfig:
    """An enabled cache; lookups get a generous budget (tests share a busy machine: a slow lookup
    would be a miss, which is right in production and flaky in a test)."""

    settings.setdefault("lookup_timeout", 2.0)
    return CacheConfig(enabled=True, **settings)


@pytest.fixture
async def cache_app(aiohttp_server):
    """`await cache_app(cache)` -> (base URL, backend): the tiny app serving `cache`."""

    async def start(cache: ResponseCache, backend: ScriptedBackend | None = None):
        backend = backend or ScriptedBackend()
        server = await aiohttp_server(build_cache_app(cache, backend))
        return str(server.make_url("")).rstrip("/"), backend

    return start


class RedisServer:
    """A real redis-server on a unix socket in tmp_path, started and stopped by the test."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(self.socket), "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--enable-debug-command", "local"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    def _answers(self) -> bool:
        """Whether the server answers PING (its socket file appears before it accepts)."""

        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.settimeout(1)
                probe.connect(str(self.socket))
                probe.sendall(b"PING\r\n")
                return probe.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.socket.unlink(missing_ok=True)


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
