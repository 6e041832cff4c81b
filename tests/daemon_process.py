"""The real `nomyo-router` process for tests of signals, reload and shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaemonProcess:
    """Starts `python -m nomyo --config PATH`, collects its stderr lines, stops it at the end."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()):
        self.config_path = config_path
        self.prefix = prefix  # e.g. setpriv ... to run it as another user
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    def write_config(self, text: str) -> None:
        self.config_path.write_text(f"listen: 127.0.0.1:{self.port}\npoll_interval: 0.2\n{text}")

    async def start(self, text: str) -> DaemonProcess:
        self.write_config(text)
        self.process = await asyncio.create_subprocess_exec(
            *self.prefix, sys.executable, "-m", "nomyo", "--config", str(self.config_path),
            stderr=asyncio.subprocess.PIPE, env=self.env)
        self._reader = asyncio.create_task(self._read())
        await self.wait_for_log("listening on")
        return self

    async def _read(self) -> None:
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode().rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        for _ in range(int(timeout / 0.02)):
            if text in self.log:
                return
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"{text!r} not logged; log so far:\n{self.log}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    async def reload(self, text: str | None = None, expect: str = "configuration reloaded") -> None:
        if text is not None:
            self.write_config(text)
        count = self.log.count(expect)
        self.signal(signal.SIGHUP)
        for _ in range(500):
            if self.log.count(expect) > count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{expect!r} not logged after SIGHUP; log:\n{self.log}")

    async def wait(self, timeout: float = 20.0) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reader
        return code

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def post_json(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, dict]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)
