"""`/api/usage-stream` with real clients: the snapshot at once, heartbeats, coalesced updates under
load, a client that stops reading holds nothing up, and every stream ends when the daemon stops."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import aiohttp
import orjson

from tests.conftest import eventually
from tests.daemon_process import DaemonProcess


class EventReader:
    """Reads an SSE response: events (parsed `data:`) and comment lines (heartbeats)."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response
        self.events: list[dict] = []
        self.comments = 0

    async def next(self) -> dict | None:
        """The next event (None at the end of the stream); heartbeats are counted on the way."""

        data: list[str] = []
        while True:
            line = await self.response.content.readline()
            if not line:
                return None
            text = line.decode().rstrip("\r\n")
            if text.startswith(":"):
                self.comments += 1
            elif text.startswith("data: "):
                data.append(text[6:])
            elif not text and data:
                event = orjson.loads("\n".join(data))
                self.events.append(event)
                return event


async def test_snapshot_at_once_then_heartbeats(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], usage_stream_heartbeat=0.2)
    async with http.get(router.url + "/api/usage-stream") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        reader = EventReader(resp)
        first = await asyncio.wait_for(reader.next(), 5)
        assert [b["name"] for b in first["backends"]] == ["a"]
        assert first["backends"][0]["status"] == "ok" and first["backends"][0]["version"] == "0.12.3"
        assert [m["model"] for m in first["backends"][0]["loaded"]] == ["llama3:latest"]
        assert first["usage_counts"] == {} and first["queued_total"] == 0

        async def heartbeats(count):
            while reader.comments < count:
                line = await resp.content.readline()
                if line.startswith(b":"):
                    reader.comments += 1
                else:
                    assert line.strip() == b"", f"an update although nothing changed: {line!r}"
        await asyncio.wait_for(heartbeats(3), 10)  # polls that see the same fleet send nothing


async def test_updates_are_coalesced_and_end_exact(fakes, start_router, http):
    """80 requests at once on two backends make hundreds of slot changes; the stream sends at
    most one snapshot per usage_stream_interval, and its last one has the exact totals."""

    a = await fakes("a")
    b = await fakes("b")
    router = await start_router([a, b], slots=4, usage_stream_interval=0.2)
    changes = 0

    def count() -> None:
        nonlocal changes
        changes += 1

    router.ledger.on_change(count)
    body = {"model": "llama3", "messages": [{"role": "user", "content": "one two"}], "stream": False,
            "options": {"num_predict": 2}}
    async with http.get(router.url + "/api/usage-stream") as resp:
        reader = EventReader(resp)
        await reader.next()
        started = time.monotonic()

        async def one():
            async with http.post(router.url + "/api/chat", json=body) as r:
                assert r.status == 200
                await r.read()

        listening = asyncio.create_task(_collect(reader))
        await asyncio.gather(*(one() for _ in range(80)))
        await eventually(lambda: reader.events and _tokens(reader.events[-1]) == (160, 160, 80),
                         what="a snapshot with the final totals", timeout=10)
        elapsed = time.monotonic() - started
        listening.cancel()
    updates = len(reader.events) - 1
    assert changes >= 160
    assert 1 <= updates <= elapsed / 0.2 + 2
    assert updates < changes / 4


async def _collect(reader: EventReader) -> None:
    while await reader.next() is not None:
        pass


def _tokens(event: dict) -> tuple[int, int, int]:
    rows = event["tokens"]
    return (sum(r["input_tokens"] for r in rows), sum(r["output_tokens"] for r in rows),
            sum(r["requests"] for r in rows))


async def test_a_client_that_stops_reading_holds_nothing_up(fakes, start_router, http):
    """One client opens the stream with a tiny receive buffer and never reads. Streams and
    updates go on: every request completes, and a reading client sees the final totals."""

    a = await fakes("a", reply="{name} " + "word " * 50)
    router = await start_router([a], slots=8, usage_stream_interval=0.01)
    host, port = router.url.removeprefix("http://").split(":")
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    _reader, writer = await asyncio.open_connection(sock=raw)
    writer.write(f"GET /api/usage-stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    try:
        await eventually(lambda: len(router.router.stream.subscribers) == 1, what="the stalled client subscribed")
        async with http.get(router.url + "/api/usage-stream") as resp:
            reader = EventReader(resp)
            await reader.next()
            listening = asyncio.create_task(_collect(reader))

            async def one():
                async with http.post(router.url + "/api/generate", json={"model": "llama3", "prompt": "x"}) as r:
                    assert r.status == 200
                    assert orjson.loads((await r.read()).splitlines()[-1])["done"]

            for _ in range(5):
                await asyncio.gather(*(one() for _ in range(16)))
            await eventually(lambda: reader.events and _tokens(reader.events[-1])[2] == 80,
                             what="the reading client saw every request", timeout=10)
            listening.cancel()
        await eventually(lambda: len(router.router.stream.subscribers) == 1,  # the stalled one stays
                         what="only the stalled client left")
    finally:
        writer.close()


async def test_streams_end_when_the_daemon_stops(fakes, tmp_path):
    """SIGTERM: the stream ends cleanly at once (the drain does not wait for it) and the daemon
    exits 0 long before its drain_timeout."""

    a = await fakes("a")
    daemon = DaemonProcess(tmp_path / "config.yaml")
    await daemon.start(f"endpoints:\n  - name: a\n    url: {a.url}\ndrain_timeout: 60\n")
    try:
        async with aiohttp.ClientSession() as http, http.get(daemon.url + "/api/usage-stream") as resp:
            reader = EventReader(resp)
            assert (await reader.next())["backends"][0]["name"] == "a"
            daemon.signal(signal.SIGTERM)
            assert await asyncio.wait_for(_collect(reader), 20) is None
        assert await daemon.wait() == 0
        assert "still in flight" not in daemon.log
    finally:
        await daemon.stop()
