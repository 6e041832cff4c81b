"""Client connections against the real daemon: idle and slow clients are cut off, thousands of
idle sockets leave room for real requests, and protocol errors are answered in JSON."""

from __future__ import annotations

import asyncio
import resource

import aiohttp
import orjson
import pytest

CHAT = {"model": "llama3", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


async def chat(http: aiohttp.ClientSession, url: str) -> int:
    async with http.post(url + "/api/chat", json=CHAT, timeout=aiohttp.ClientTimeout(total=20)) as resp:
        await resp.read()
        return resp.status


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_router(reader: asyncio.StreamReader, within: float = 10.0) -> bytes:
    """Everything the router sends until it closes the connection (fails if it does not)."""

    return await asyncio.wait_for(reader.read(), within)


def open_files_limit(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


@pytest.fixture
def many_files():
    """This test process opens thousands of sockets itself."""

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 5000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 5000:
        pytest.skip("the hard open-files limit is below 5000")
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def open_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for start in range(0, count, 250):
        pairs = await asyncio.gather(*(connect(port) for _ in range(start, min(count, start + 250))))
        writers += [writer for _, writer in pairs]
    return writers


async def test_two_thousand_idle_sockets_leave_room_for_real_requests(fakes, daemon, http, many_files):
    """Started with the usual soft limit of 1024 open files, the daemon raises it to the hard
    limit; 2,000 connections that never send a byte are accepted and held, and real requests
    are still served meanwhile (once, 1,300 idle sockets exhausted the descriptors and every
    real request was reset)."""

    a = await fakes("a", loaded=["llama3:latest"])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    router = await daemon(f"endpoints:\n  - {a.url}\n", prefix=("prlimit", f"--nofile=1024:{hard}", "--"))
    assert open_files_limit(router.process.pid) == (hard, hard)
    idle = await open_idle(router.port, 2000)
    try:
        assert await asyncio.gather(*(chat(http, router.url) for _ in range(20))) == [200] * 20
    finally:
        for writer in idle:
            writer.close()
    assert "Too many open files" not in router.log


async def test_idle_and_slow_clients_are_cut_off(fakes, daemon, http):
    """A connection that sends nothing, one that sends its headers a byte at a time, and a
    kept-alive one left idle are closed after their timeouts."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await daemon(f"endpoints:\n  - {a.url}\n"
                              "client_header_timeout: 0.5\nclient_body_timeout: 0.5\nkeepalive_timeout: 0.5\n")
    silent, _ = await connect(router.port)
    assert await closed_by_router(silent) == b""

    reader, writer = await connect(router.port)
    writer.write(b"POST /api/chat HTTP/1.1\r\n")

    async def dribble():
        for byte in b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 200:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    dribbling = asyncio.create_task(dribble())
    assert await closed_by_router(reader) == b""
    dribbling.cancel()

    reader, writer = await connect(router.port)
    writer.write(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await closed_by_router(reader)).startswith(b"HTTP/1.1 200 OK")  # answered, then closed when idle

    await router.reload()  # something logged after them: the log is read up to here
    assert "Traceback" not in router.log


async def test_a_stalled_body_gets_408_and_a_slow_steady_one_is_served(fakes, daemon, http):
    """A body that stops coming gets 408 in Ollama's words after client_body_timeout (shorter
    here than the header timeout), and the access log says so; a body sent slowly but steadily
    (each pause shorter than the timeout, the whole longer) is served."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await daemon(f"endpoints:\n  - {a.url}\n"
                              "client_header_timeout: 30\nclient_body_timeout: 0.5\nkeepalive_timeout: 30\n")
    body = orjson.dumps(CHAT)
    reader, writer = await connect(router.port)
    writer.write(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:10]))
    head, _, answer = (await closed_by_router(reader)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(answer) == {"error": "no request body data for 0.5s (client_body_timeout)"}

    async def steady():
        for offset in range(0, len(body), 8):
            yield body[offset:offset + 8]
            await asyncio.sleep(0.1)

    async with http.post(router.url + "/api/chat", data=steady()) as resp:
        assert resp.status == 200
    await router.reload()  # something logged after them: the log is read up to here
    assert "POST /api/chat status=408" in router.log and "Traceback" not in router.log


async def test_max_connections_makes_room_by_closing_idle_ones(fakes, daemon, http):
    """At max_connections the oldest idle connection is closed for a new one, so real requests
    get through 200 idle sockets against a limit of 50; when none is idle (every connection has
    begun a request) the new one is answered 503 and closed. One warning line per episode, however
    many connections it refuses or closes."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await daemon(f"endpoints:\n  - {a.url}\nmax_connections: 50\n")
    idle = await open_idle(router.port, 200)
    assert await asyncio.gather(*(chat(http, router.url) for _ in range(5))) == [200] * 5
    for writer in idle:
        writer.close()
    await asyncio.sleep(0.2)
    begun = []
    for _ in range(50):
        reader, writer = await connect(router.port)
        writer.write(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a head begun, not finished
        await writer.drain()
        begun.append(writer)
    await asyncio.sleep(0.2)
    reader, writer = await connect(router.port)
    head, _, body = (await closed_by_router(reader)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head
    assert orjson.loads(body) == {"error": "server busy: too many connections, please try again."}
    for writer in begun:
        writer.close()
    await asyncio.sleep(0.2)
    assert await chat(http, router.url) == 200
    # two episodes (the idle sockets, then the begun requests): one warning line each
    assert router.log.count("max_connections (50) reached") == 2
    assert router.log.count("connections below max_connections (50) again") == 2


@pytest.mark.parametrize("garbage", [
    b"<script>alert(1)</script> / HTTP/1.1\r\n\r\n",
    b"GET /<script>alert(1)</script> HTTP/1.1\r\nHost: x\r\nX-Bad\x01: <script>\r\n\r\n",
    b"GET /" + b"<script>" * 2000 + b" HTTP/1.1\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n<script>\r\n",
])
async def test_protocol_errors_answer_json_and_never_echo_the_request(fakes, daemon, garbage):
    a = await fakes("a")
    router = await daemon(f"endpoints:\n  - {a.url}\n")
    reader, writer = await connect(router.port)
    writer.write(garbage)
    head, _, body = (await closed_by_router(reader)).partition(b"\r\n\r\n")
    writer.close()
    assert head.split(b"\r\n")[0].endswith(b" 400 Bad Request") and b"Content-Type: application/json" in head
    assert orjson.loads(body)["error"].startswith("bad request")
    assert b"script" not in body, body
