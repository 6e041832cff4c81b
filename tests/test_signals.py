"""The real daemon under signals: SIGHUP reloads, SIGTERM drains, sd_notify tells systemd."""

from __future__ import annotations

import asyncio
import signal
import socket

import aiohttp
import orjson
import pytest

from tests.daemon_process import DaemonProcess, post_json
from tests.fakes.ollama_backend import FakeOllama

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}


def endpoints(*fakes) -> str:
    return "endpoints:\n" + "".join(f"  - name: {f.name}\n    url: {f.url}\n" for f in fakes)


def notifications(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def stream_lines(session, url, body=CHAT) -> list[dict]:
    async with session.post(url + "/api/chat", data=orjson.dumps(body)) as resp:
        assert resp.status == 200
        return [orjson.loads(line) for line in (await resp.read()).splitlines()]


async def test_sighup_adds_a_backend_and_traffic_flows_to_it(fakes, daemon):
    a = await fakes("a")
    b = await fakes("b", models=["fresh:latest"])
    router = await daemon(endpoints(a))
    async with aiohttp.ClientSession() as http:
        status, body = await post_json(http, router.url + "/api/generate",
                                       {"model": "fresh", "prompt": "x", "stream": False})
        assert (status, body) == (404, {"error": "model 'fresh' not found"})
        await router.reload(endpoints(a, b))
        status, body = await post_json(http, router.url + "/api/generate",
                                       {"model": "fresh", "prompt": "x", "stream": False})
        assert status == 200 and body["response"] == "Hello from b"


async def test_sighup_removing_a_backend_lets_its_stream_finish(fakes, daemon):
    a = await fakes("a", loaded=["llama3:latest"])
    b = await fakes("b")
    a.gate = asyncio.Event()
    router = await daemon(endpoints(a))
    async with aiohttp.ClientSession() as http:
        in_flight = asyncio.create_task(stream_lines(http, router.url))
        await a.wait_until(lambda: a.active == 1)
        await router.reload(endpoints(b))
        after = await stream_lines(http, router.url)   # new requests go to b
        assert after[-1]["done"] and "".join(x["message"]["content"] for x in after) == "Hello from b"
        a.gate.set()
        lines = await in_flight                        # the old stream completes on a
        assert lines[-1]["done"] and "".join(x["message"]["content"] for x in lines) == "Hello from a"
    assert a.disconnects == 0


async def test_sighup_with_a_broken_file_keeps_the_old_config(fakes, daemon):
    a = await fakes("a")
    router = await daemon(endpoints(a))
    await router.reload("endpoints: [http://x:1\n", expect="reload failed, keeping the running configuration")
    await router.reload("endpoints: []\nbogus_key: 1\n", expect="bogus_key: unknown key")
    async with aiohttp.ClientSession() as http:
        lines = await stream_lines(http, router.url)
    assert lines[-1]["done"]
    assert str(router.config_path) in router.log


async def test_sigterm_lets_streams_finish_then_exits_0(fakes, daemon):
    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()
    router = await daemon(endpoints(a) + "max_concurrent_connections: 3\n")
    async with aiohttp.ClientSession() as http:
        streams = [asyncio.create_task(stream_lines(http, router.url)) for _ in range(3)]
        await a.wait_until(lambda: a.active == 3)
        router.signal(signal.SIGTERM)
        await router.wait_for_log("letting in-flight requests finish")
        with pytest.raises(aiohttp.ClientConnectionError):  # no new connections while draining
            async with aiohttp.ClientSession() as fresh:
                await stream_lines(fresh, router.url)
        await asyncio.sleep(0.3)
        a.gate.set()
        results = await asyncio.gather(*streams)
    assert all(lines[-1]["done"] for lines in results)
    assert await router.wait() == 0
    assert "stopped" in router.log and a.disconnects == 0


async def test_second_sigterm_stops_waiting(fakes, daemon):
    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()  # never set: the stream would wait forever
    router = await daemon(endpoints(a))
    async with aiohttp.ClientSession() as http:
        stream = asyncio.create_task(stream_lines(http, router.url))
        await a.wait_until(lambda: a.active == 1)
        router.signal(signal.SIGTERM)
        await router.wait_for_log("letting in-flight requests finish")
        router.signal(signal.SIGTERM)
        assert await router.wait(timeout=10) == 0
        lines = await stream  # ended honestly: its last line says why
        assert lines[-1] == {"error": "the router is shutting down"}
    assert "closing in-flight requests now" in router.log
    await a.wait_until(lambda: a.disconnects == 1)


async def test_sd_notify_messages_in_order(fakes, daemon, tmp_path):
    a = await fakes("a")
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    router = await daemon(endpoints(a), env={"NOTIFY_SOCKET": path})
    await router.reload()
    router.signal(signal.SIGTERM)
    assert await router.wait() == 0
    messages = notifications(sock)
    sock.close()
    kinds = [m.split("\n")[0].split("=")[0] for m in messages]
    assert kinds[:4] == ["READY", "RELOADING", "READY", "STOPPING"]
    assert "STATUS=serving on 127.0.0.1" in messages[0] and "1 of 1 backends up" in messages[0]
    reloading = dict(line.split("=", 1) for line in messages[1].split("\n"))
    assert int(reloading["MONOTONIC_USEC"]) > 0


async def test_draining_status_is_sent_when_the_count_changes(fakes, daemon, tmp_path):
    """1. One stream is held open on the backend.  2. SIGTERM: the daemon drains, looking at the
    count every 50 ms.  3. Half a second later the stream is let go.  systemd got one
    `STATUS=draining: 1 request in flight` (not one per look), and the log says `1 backend`,
    `1 model`."""

    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    messages: list[str] = []

    async def listen() -> None:  # as systemd does: a full socket would block the daemon's sends
        while True:
            messages.append((await asyncio.get_running_loop().sock_recv(sock, 4096)).decode())

    listener = asyncio.create_task(listen())
    router = await daemon(endpoints(a), env={"NOTIFY_SOCKET": path})
    async with aiohttp.ClientSession() as http:
        stream = asyncio.create_task(stream_lines(http, router.url))
        await a.wait_until(lambda: a.active == 1)
        router.signal(signal.SIGTERM)
        await router.wait_for_log("letting in-flight requests finish")
        await asyncio.sleep(0.5)
        a.gate.set()
        assert (await stream)[-1]["done"]
    assert await router.wait() == 0
    listener.cancel()
    sock.close()
    assert [m for m in messages if m.startswith("STATUS=draining:")] == ["STATUS=draining: 1 request in flight"]
    assert "with 1 backend\n" in router.log + "\n" and ", 1 model, " in router.log


async def test_watchdog_pings_when_systemd_asks_for_them(fakes, daemon, tmp_path):
    a = await fakes("a")
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    await daemon(endpoints(a), env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    seen = []
    for _ in range(4):
        seen.append(await asyncio.to_thread(sock.recv, 4096))
    sock.close()
    assert sum(m == b"WATCHDOG=1" for m in seen) >= 2


async def test_listen_change_needs_a_restart_and_keeps_serving(fakes, daemon, tmp_path):
    """Changing `listen` and reloading: the daemon keeps serving on its port and keeps saying so
    (sd_notify STATUS, log), with one warning per change; changing it back is no news (once the
    log said the opposite of the truth then)."""

    a = await fakes("a")
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    router = await daemon(endpoints(a), env={"NOTIFY_SOCKET": path})
    text = endpoints(a)
    for port in (1, 1, router.port, 2):
        router.config_path.write_text(f"listen: 127.0.0.1:{port}\npoll_interval: 0.2\n{text}")
        await router.reload()
    async with aiohttp.ClientSession() as http:
        assert (await stream_lines(http, router.url))[-1]["done"]
    statuses = [line for m in notifications(sock) for line in m.split("\n") if line.startswith("STATUS=serving")]
    sock.close()
    assert len(statuses) == 5 and all(f"serving on 127.0.0.1:{router.port}:" in s for s in statuses), statuses
    warnings = [line for line in router.lines if "takes a restart" in line]
    assert len(warnings) == 2, warnings
    assert "listen changed to 127.0.0.1:1 in" in warnings[0]
    assert f"still serving on 127.0.0.1:{router.port}" in warnings[0]
    assert "listen changed to 127.0.0.1:2 in" in warnings[1]


class SlowToList(FakeOllama):
    """Answers /api/tags only after `delay` seconds, so a reload that polls it takes that long."""

    def __init__(self, *args, delay: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.listing = asyncio.Event()

    async def _tags(self, request):
        self.listing.set()
        await asyncio.sleep(self.delay)
        return await super()._tags(request)


async def test_sighups_during_a_reload_are_not_lost(fakes, backends, daemon):
    """A reload is slow (a new backend takes 1.5 s to list its models). Three SIGHUPs arrive
    while it runs, each after the file changed again. They are coalesced into one more reload
    after it, and the file as it was at the last SIGHUP is what ends up applied (once, 4 SIGHUPs
    in 100 were dropped and a changed backend list stayed unapplied)."""

    a, b, c = await fakes("a"), await fakes("b"), await fakes("c")
    slow = await backends(SlowToList("slow", delay=1.5))
    router = await daemon(endpoints(a) + "poll_timeout: 5\n")
    router.write_config(endpoints(a, slow) + "poll_timeout: 5\n")
    router.signal(signal.SIGHUP)
    await asyncio.wait_for(slow.listing.wait(), 10)
    for fleet in ((a, b), (b, c), (c,)):
        router.write_config(endpoints(*fleet) + "poll_timeout: 5\n")
        router.signal(signal.SIGHUP)
        await asyncio.sleep(0.05)
    for _ in range(500):
        if router.log.count("configuration reloaded") >= 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # no third reload follows
    assert router.log.count("configuration reloaded") == 2, router.log
    async with aiohttp.ClientSession() as http, http.get(router.url + "/api/config") as resp:
        assert [e["name"] for e in (await resp.json())["endpoints"]] == ["c"]


async def test_journal_priority_prefixes_under_systemd(fakes, tmp_path):
    """With JOURNAL_STREAM naming its stderr, every line carries a <N> priority and no timestamp."""
    import os
    import sys

    a = await fakes("a")
    config = tmp_path / "config.yaml"
    port = DaemonProcess(config).port
    config.write_text(f"listen: 127.0.0.1:{port}\n{endpoints(a)}")
    read_end, write_end = os.pipe()
    info = os.fstat(write_end)
    env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "nomyo", "--config", str(config),
                                                   stderr=write_end, env=env)
    os.close(write_end)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/api/tags") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
        with os.fdopen(read_end, "rb") as pipe:
            lines = pipe.read().decode().splitlines()
    finally:
        if process.returncode is None:
            process.kill()
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>") for line in lines), lines
    assert any(line.startswith("<6>nomyo.access: GET /api/tags") for line in lines)
    assert not any(line[3:7].isdigit() for line in lines)  # no timestamp of our own
