"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for dashboard tests.

The dashboard keeps an EventSource open, so Chromium's `--virtual-time-budget` never runs out and
`--screenshot` fires before the first event arrived. Driving the page over the DevTools protocol
lets a test wait for what a person would see (a condition in the page), then read the DOM and
take the screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import shutil
import tempfile
from pathlib import Path

import aiohttp

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One Chromium process with one page; `async with Browser(path) as page: ...`."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1000):
        self.executable = executable
        self.width, self.height = width, height
        self.process: asyncio.subprocess.Process | None = None
        self.profile = tempfile.mkdtemp(prefix="nomyo-chromium-")
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._stderr_task: asyncio.Task | None = None

    async def __aenter__(self) -> Browser:
        self.process = await asyncio.create_subprocess_exec(
            self.executable, *FLAGS, f"--user-data-dir={self.profile}",
            f"--window-size={self.width},{self.height}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        port = await self._devtools_port()
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            pages = [t for t in await resp.json() if t.get("type") == "page"]
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        await self.call("Page.enable")
        await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        return self

    async def _devtools_port(self) -> int:
        async with asyncio.timeout(30):
            while line := await self.process.stderr.readline():
                found = re.search(rb"DevTools listening on ws://[^:]+:(\d+)/", line)
                if found:
                    self._stderr_task = asyncio.create_task(self._drain_stderr())
                    return int(found.group(1))
        raise RuntimeError("chromium did not open its DevTools port")

    async def _drain_stderr(self) -> None:
        while await self.process.stderr.readline():
            pass

    async def __aexit__(self, *exc) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    async def call(self, method: str, **params):
        """Send one DevTools command and return its result (events in between are skipped)."""

        ident = next(self._ids)
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(30):
            async for message in self.ws:
                data = message.json()
                if data.get("id") == ident:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return data.get("result", {})
        raise RuntimeError(f"{method}: the DevTools connection closed")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0) -> None:
        """Until `expression` is truthy in the page (what a person would wait to see)."""

        deadline = asyncio.get_running_loop().time() + timeout
        while not await self.evaluate(f"!!({expression})"):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the page never showed: {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        """The whole page, as tall as its content."""

        height = max(self.height, int(await self.evaluate("document.documentElement.scrollHeight")))
        await self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height,
                        deviceScaleFactor=1, mobile=False)
        result = await self.call("Page.captureScreenshot", format="png")
        save(path, base64.b64decode(result["data"]))


def save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
