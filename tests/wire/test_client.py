"""The hand-written upstream client (nomyo/wire) against real servers on 127.0.0.1 that misbehave
on purpose (tests/wire/servers.py): every failure must come out as the aiohttp exception the relay
already handles, worded by `upstream.describe` as before; no connection may leak or be reused
when it cannot be trusted. Every test runs on asyncio's own loop and on uvloop (see conftest.py)."""

from __future__ import annotations

import asyncio
import re
import resource
import shutil
import socket
import ssl
import subprocess
import time

import aiohttp
import orjson
import pytest
from yarl import URL

from nomyo.upstream import RETRYABLE, describe
from nomyo.wire import BrokenBody, ConnectTimeout, FirstByteTimeout, NotHttp, Origin, Pool, parse_target
from nomyo.wire.request import encode_request
from tests.conftest import eventually
from tests.wire.servers import LAST_CHUNK, RawServer, answer, chunk, chunked_head, keep_answering, reset


@pytest.fixture
async def serve():
    servers: list[RawServer] = []

    async def start(script) -> RawServer:
        server = await RawServer(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def pool():
    pools: list[Pool] = []

    def make(**options) -> Pool:
        pools.append(Pool(**options))
        return pools[-1]

    yield make
    for made in pools:
        await made.close()


def json_reply(request) -> bytes:
    return answer(body=orjson.dumps({"echo": request.body.decode(), "path": request.target}))


async def test_sequential_requests_reuse_one_connection(serve, pool):
    """Five POSTs one after the other: one TCP connection carries them all; each answer is whole
    and its headers are found whatever their case."""

    server = await serve(keep_answering(json_reply))
    upstream = pool()
    for i in range(5):
        response = await upstream.request("POST", server.url("/api/chat?x=1"), {"Content-Type": "application/json"},
                                          b'{"n":%d}' % i, connect_timeout=5, first_byte_timeout=5)
        assert response.status == 200 and response.headers["content-type"] == "application/json"
        assert orjson.loads(await response.read()) == {"echo": f'{{"n":{i}}}', "path": "/api/chat?x=1"}
        response.release()
    assert server.connections == 1 and len(server.requests) == 5
    assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"
    assert upstream.idle_count() == 1


async def test_chunked_and_close_delimited_bodies(serve, pool):
    """A chunked stream arrives piece by piece and the connection is kept; a body with neither
    Content-Length nor chunking ends when the backend closes, and that connection is not kept."""

    async def script(reader, writer, server):
        while (request := await server.next_request(reader)) is not None:
            if request.target == "/chunked":
                writer.write(chunked_head() + b"".join(chunk(b'{"n":%d}\n' % i) for i in range(50)) + LAST_CHUNK)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 100_000)
                await writer.drain()
                writer.close()
                return
            await writer.drain()

    server = await serve(script)
    upstream = pool()
    response = await upstream.request("GET", server.url("/chunked"))
    body = b"".join([piece async for piece in response.iter_chunks()])
    response.release()
    assert body == b"".join(b'{"n":%d}\n' % i for i in range(50))
    response = await upstream.request("GET", server.url("/close"))
    assert await response.read() == b"x" * 100_000
    response.release()
    assert upstream.idle_count() == 0 and server.connections == 1
    response = await upstream.request("GET", server.url("/chunked"))
    assert len(await response.read()) == len(body)
    response.release()
    assert server.connections == 2


async def test_head_204_304_have_no_body(serve, pool):
    """HEAD's answer announces a body it does not send; 204 and 304 have none. None of them may
    wait for one. 204/304 keep the connection; after HEAD it is closed (the parser would wait)."""

    async def script(reader, writer, server):
        while (request := await server.next_request(reader)) is not None:
            if request.method == "HEAD":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
            else:
                status = int(request.target.strip("/"))
                writer.write(f"HTTP/1.1 {status} X\r\nETag: \"e\"\r\n\r\n".encode())
            await writer.drain()

    server = await serve(script)
    upstream = pool()
    for status in (204, 304, 204):
        response = await upstream.request("GET", server.url(f"/{status}"), first_byte_timeout=5)
        assert response.status == status and await response.read() == b""
        response.release()
    assert server.connections == 1
    response = await upstream.request("HEAD", server.url("/"), first_byte_timeout=5)
    assert response.headers["Content-Length"] == "1234"
    assert [piece async for piece in response.iter_chunks()] == []
    response.release()
    assert upstream.idle_count() == 0


async def test_interim_answers_are_skipped(serve, pool):
    """A 103 Early Hints before the real answer: the caller sees the 200 and its body."""

    server = await serve(keep_answering(lambda request: b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                                        + answer(body=b'{"ok":true}')))
    response = await pool().request("GET", server.url())
    assert response.status == 200 and "Link" not in response.headers and await response.read() == b'{"ok":true}'
    response.release()


async def test_a_backend_that_closes_idle_connections(serve, pool):
    """The backend closes each connection 50 ms after its answer (as llama-server and uvicorn
    do after their keep-alive timeout). The next POST, sent after that, goes out on a fresh
    connection and succeeds: the closed one was noticed, never written to."""

    async def script(reader, writer, server):
        if await server.next_request(reader) is not None:
            writer.write(json_reply(server.requests[-1]))
            await writer.drain()
            await asyncio.sleep(0.05)

    server = await serve(script)
    upstream = pool()
    for i in range(3):
        response = await upstream.request("POST", server.url(), {}, b"%d" % i)
        assert orjson.loads(await response.read())["echo"] == str(i)
        response.release()
        await eventually(lambda: all(conn.lost for idle in upstream._idle.values() for conn in idle),
                         what="the idle close noticed")
    assert server.connections == 3 and len(server.requests) == 3


async def test_a_close_the_loop_has_not_seen_yet(serve, pool):
    """The backend closes right after its answer, and the client's loop is busy (blocked) while
    the FIN arrives, so the protocol has not seen it when the next request goes out.
    With the idle poll, the POST goes to a fresh connection. Without it, a POST fails with the
    retryable "closed the connection" (it may have been processed), while a GET is retried once
    on a fresh connection (idempotent) and succeeds."""

    async def script(reader, writer, server):
        if await server.next_request(reader) is not None:
            writer.write(json_reply(server.requests[-1]))
            await writer.drain()

    server = await serve(script)

    async def second_request(upstream: Pool, method: str):
        first = await upstream.request("GET", server.url())
        await first.read()
        first.release()
        time.sleep(0.1)  # noqa: ASYNC251 (on purpose: the loop is blocked, the FIN lies in the socket unread)
        return await upstream.request(method, server.url(), {}, b"2" if method == "POST" else b"")

    response = await second_request(pool(recheck_after=0), "POST")
    assert orjson.loads(await response.read())["echo"] == "2"
    response.release()
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)) as caught:
        await second_request(pool(recheck_after=None), "POST")
    assert isinstance(caught.value, RETRYABLE)
    response = await second_request(pool(recheck_after=None), "GET")
    assert response.status == 200
    response.release()
    assert server.connections == 5


async def test_failures_before_the_answer(serve, pool):
    """Closed without a word, reset, half a status line then closed, garbage instead of HTTP:
    each comes out as the aiohttp class the relay retries on another backend, with its words."""

    async def script(reader, writer, server):
        request = await server.next_request(reader)
        if request.target == "/reset":
            reset(writer)
        elif request.target == "/half":
            writer.write(b"HTTP/1.1 200 O")
            await writer.drain()
        elif request.target == "/garbage":
            writer.write(b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n")
            await writer.drain()

    server = await serve(script)
    upstream = pool()
    expected = {"/closed": (aiohttp.ServerDisconnectedError, "the backend closed the connection"),
                "/half": (aiohttp.ServerDisconnectedError, "the backend closed the connection"),
                "/reset": (aiohttp.ClientOSError, "Connection reset by peer"),
                "/garbage": (NotHttp, "the answer is not HTTP (")}
    for path, (kind, words) in expected.items():
        with pytest.raises(kind) as caught:
            await upstream.request("POST", server.url(path), {}, b"{}")
        assert isinstance(caught.value, RETRYABLE) and words in describe(caught.value), (path, describe(caught.value))
    assert isinstance(caught.value, aiohttp.ClientResponseError)
    assert upstream.idle_count() == 0 and not upstream._busy


async def test_failures_mid_body(serve, pool):
    """The headers came, then: a reset, a close before Content-Length was reached, a malformed
    chunk size, a chunked body that stops without its last chunk. What arrived is delivered,
    then a payload error (aiohttp.ClientPayloadError, as aiohttp's client raises)."""

    async def script(reader, writer, server):
        request = await server.next_request(reader)
        if request.target in ("/reset", "/short"):
            writer.write(answer(body=b"x" * 10)[:-10].replace(b"Length: 10", b"Length: 1000") + b"first")
            await writer.drain()
            await asyncio.sleep(0.05)
            reset(writer) if request.target == "/reset" else writer.close()
        else:
            writer.write(chunked_head() + chunk(b"first"))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"ZZ\r\nnope\r\n" if request.target == "/malformed" else b"")
            await writer.drain()
            writer.close()

    server = await serve(script)
    upstream = pool()
    words = {"/reset": "reset by peer", "/short": "before the end of the body",
             "/malformed": "malformed body", "/unfinished": "before the end of the body"}
    for path, reason in words.items():
        response = await upstream.request("GET", server.url(path))
        pieces = []
        with pytest.raises(aiohttp.ClientPayloadError) as caught:
            async for piece in response.iter_chunks():
                pieces.append(piece)
        response.release()
        assert b"".join(pieces) == b"first" and isinstance(caught.value, BrokenBody)
        assert reason in describe(caught.value), describe(caught.value)
    assert upstream.idle_count() == 0 and not upstream._busy


async def test_connect_failures(pool):
    """Nobody listening: "cannot connect (...)", as aiohttp's connector words it. A backend
    whose accept queue is full never completes the handshake: the connect timeout."""

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await pool().request("GET", f"http://127.0.0.1:{port}/", connect_timeout=5)
    assert describe(caught.value).startswith("cannot connect (") and isinstance(caught.value, RETRYABLE)

    listener, queued = socket.socket(), []
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    try:
        for _ in range(8):  # fill the accept queue; further handshakes are left unanswered
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(listener.getsockname())
            queued.append(client)
        with pytest.raises(ConnectTimeout) as caught:
            await pool().request("GET", f"http://127.0.0.1:{listener.getsockname()[1]}/", connect_timeout=0.2)
        assert isinstance(caught.value, TimeoutError) and str(caught.value) == "connect timed out after 0.2s"
    finally:
        for client in queued:
            client.close()
        listener.close()


async def test_no_answer_within_the_first_byte_timeout(serve, pool):
    """The backend reads the request and says nothing: FirstByteTimeout (a TimeoutError, as
    aiohttp's), and the connection is closed (the backend sees it go)."""

    async def script(reader, writer, server):
        await server.next_request(reader)
        await server.next_request(reader)  # returns None once the client gave up

    server = await serve(script)
    upstream = pool()
    with pytest.raises(FirstByteTimeout) as caught:
        await upstream.request("POST", server.url(), {}, b"{}", first_byte_timeout=0.1)
    assert isinstance(caught.value, RETRYABLE) and str(caught.value) == "no answer within 0.1s"
    await eventually(lambda: server.closed_by_client == 1, what="the backend saw the connection close")


async def test_cancel_and_close_drop_the_connection(serve, pool):
    """A request cancelled while waiting for its answer, and an answer closed mid-stream (the
    client went away): the backend sees each connection close; a read waiting on the closed
    answer fails with a ClientError; nothing is pooled."""

    async def script(reader, writer, server):
        request = await server.next_request(reader)
        if request.target == "/stream":
            writer.write(chunked_head() + chunk(b"one"))
            await writer.drain()
        await server.next_request(reader)

    server = await serve(script)
    upstream = pool()
    waiting = asyncio.create_task(upstream.request("GET", server.url("/silent")))
    await eventually(lambda: len(server.requests) == 1, what="the request arrived")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    response = await upstream.request("GET", server.url("/stream"))
    chunks = response.iter_chunks()
    assert await anext(chunks) == b"one"
    pending = asyncio.create_task(anext(chunks))
    await asyncio.sleep(0.01)
    response.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending
    response.release()
    await eventually(lambda: server.closed_by_client == 2, what="the backend saw both connections close")
    assert upstream.idle_count() == 0 and not upstream._busy


async def test_released_before_the_end_is_closed_not_pooled(serve, pool):
    """A caller that stops reading a stream midway releases it: the connection is closed (the
    rest of that answer would otherwise be read as the next one's)."""

    server = await serve(keep_answering(lambda request: chunked_head() + chunk(b"a" * 10)))
    upstream = pool()
    response = await upstream.request("GET", server.url())
    assert await anext(response.iter_chunks()) == b"a" * 10
    response.release()
    assert upstream.idle_count() == 0
    await eventually(lambda: server.closed_by_client == 1, what="the backend saw the close")


async def test_bytes_after_a_whole_answer_spoil_the_connection(serve, pool):
    """The backend sends a second, unasked answer after the first: the first is delivered, the
    connection is not reused."""

    server = await serve(keep_answering(lambda request: answer(body=b"{}") + answer(body=b"[]")))
    upstream = pool()
    response = await upstream.request("GET", server.url())
    assert await response.read() == b"{}"
    response.release()
    response = await upstream.request("GET", server.url())
    assert await response.read() == b"{}"
    response.release()
    assert server.connections == 2


async def test_header_injection_is_refused(pool):
    for headers in ({"X-A": "1\r\nX-Injected: 2"}, {"X-A\r\nX-B": "1"}, [("X-A", "1\rX")]):
        with pytest.raises(ValueError):
            await pool().request("GET", "http://127.0.0.1:9/", headers)


async def test_a_slow_reader_holds_the_backend_back(serve, pool):
    """The backend streams 64 MB as fast as it can; the client reads one piece and then nothing.
    The client stops reading at its high-water mark, the kernel buffers fill, and the backend's
    writes block: it gets nowhere near the end, and the client holds at most its mark plus one
    read. Once the client reads again, every byte arrives, in order."""

    total, block = 64 * 1024 * 1024, bytes(range(256)) * 256  # 64 KiB
    sent = [0]

    async def script(reader, writer, server):
        await server.next_request(reader)
        writer.write(answer(body=b"", headers={"Content-Length": str(total)}).replace(b"Length: 0\r\n", b""))
        while sent[0] < total:
            writer.write(block)
            sent[0] += len(block)
            await writer.drain()

    server = await serve(script)
    upstream = pool(high_water=256 * 1024)
    response = await upstream.request("GET", server.url())
    chunks = response.iter_chunks()
    received = len(await anext(chunks))
    stalled_at = await settled_value(lambda: sent[0])
    conn = response._conn
    assert stalled_at < total // 4, f"the backend wrote {stalled_at} bytes to a client that stopped reading"
    assert conn.buffered <= 256 * 1024 + 256 * 1024 + len(block)
    mismatch = 0
    async for piece in chunks:
        mismatch += piece != (block * (len(piece) // len(block) + 2))[received % len(block):][:len(piece)]
        received += len(piece)
    assert received == total and mismatch == 0
    response.release()


async def test_a_large_body_to_a_backend_that_reads_slowly(serve, pool):
    """An 8 MB request body to a backend that reads it 64 KiB at a time with pauses: far more
    than the socket buffers hold, so the transport sends it as the backend reads; the answer
    comes after the last byte, and every byte arrived."""

    async def script(reader, writer, server):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        received = bytearray()
        while len(received) < length:
            received += await reader.read(65536)
            await asyncio.sleep(0.001)
        writer.write(answer(body=b"%d %d" % (len(received), sum(received[::4096]))))
        await writer.drain()

    server = await serve(script)
    body = bytes(range(256)) * 32768
    response = await pool().request("POST", server.url(), {"Content-Type": "application/octet-stream"}, body)
    assert await response.read() == b"%d %d" % (len(body), sum(body[::4096]))
    response.release()


async def settled_value(read, quiet: float = 0.3, limit: float = 20.0):
    """The value of `read()` once it stopped changing for `quiet` seconds."""

    loop = asyncio.get_running_loop()
    value, since, started = read(), loop.time(), loop.time()
    while loop.time() - since < quiet and loop.time() - started < limit:
        await asyncio.sleep(0.02)
        if read() != value:
            value, since = read(), loop.time()
    return value


async def test_a_thousand_concurrent_streams(serve, pool):
    """1,000 streams at once, each 20 chunked lines with pauses between them: every stream
    arrives whole and in order on its own connection; afterwards the connections are pooled
    (up to the per-origin cap) and serve the next round without new ones."""

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 2500:
        pytest.skip("needs 2,500 file descriptors")

    async def script(reader, writer, server):
        while (request := await server.next_request(reader)) is not None:
            writer.write(chunked_head())
            for i in range(20):
                writer.write(chunk(b'{"stream":%s,"line":%d}\n' % (request.target[1:].encode(), i)))
                await writer.drain()
                await asyncio.sleep(0.01)
            writer.write(LAST_CHUNK)
            await writer.drain()

    server = await serve(script)
    upstream = pool(max_idle_per_origin=1000)

    async def one(n: int) -> bool:
        response = await upstream.request("POST", server.url(f"/{n}"), {"Content-Type": "application/json"}, b"{}",
                                          connect_timeout=30, first_byte_timeout=30)
        lines = b"".join([piece async for piece in response.iter_chunks()]).splitlines()
        response.release()
        return lines == [b'{"stream":%d,"line":%d}' % (n, i) for i in range(20)]

    assert all(await asyncio.gather(*(one(n) for n in range(1000))))
    assert server.connections == 1000 and upstream.idle_count() == 1000 and not upstream._busy
    assert all(await asyncio.gather(*(one(n) for n in range(100))))
    assert server.connections == 1000


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


async def test_https_backends(certificate, pool):
    """A backend behind TLS: with its certificate trusted, answers come and the connection is
    kept; with the system's trust store, the handshake fails as "cannot connect (...)"."""

    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = RawServer(keep_answering(json_reply))
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0, ssl=server_context)
    try:
        trusted = pool(ssl_context=ssl.create_default_context(cafile=str(cert)))
        for _ in range(2):
            response = await trusted.request("POST", f"https://127.0.0.1:{server.port}/tls", {}, b"hi")
            assert orjson.loads(await response.read()) == {"echo": "hi", "path": "/tls"}
            response.release()
        assert server.connections == 1
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await pool().request("GET", f"https://127.0.0.1:{server.port}/", connect_timeout=5)
        assert describe(caught.value).startswith("cannot connect (") and isinstance(caught.value, RETRYABLE)
    finally:
        await server.stop()


def test_request_bytes():
    """Host from the URL (no default port, IPv6 in brackets) unless the caller gives one;
    Content-Length always the pool's own; GET without a body has none."""

    post = encode_request("POST", parse_target(URL("http://[::1]:8080/v1/chat?x=1")),
                          [("Content-Length", "999"), ("Accept", "*/*")], b"{}")
    assert post == b"POST /v1/chat?x=1 HTTP/1.1\r\nAccept: */*\r\nHost: [::1]:8080\r\nContent-Length: 2\r\n\r\n"
    get = encode_request("GET", parse_target("https://api.example.com/models"), {"host": "other"}, b"")
    assert get == b"GET /models HTTP/1.1\r\nhost: other\r\n\r\n"
    assert parse_target("http://h/").origin == Origin("h", 80, False)
    with pytest.raises(aiohttp.InvalidURL):
        parse_target("ftp://h/")
