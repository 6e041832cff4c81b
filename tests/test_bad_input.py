"""Bad input gets a clear 4xx in Ollama's dialect and never reaches (or holds a slot on) a backend."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import ollama
import orjson
import pytest

from tests.fakes.openai_backend import FakeOpenAI
from tests.test_openai_api import endpoint

INFERENCE = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings")


@pytest.fixture
async def setup(fakes, start_router):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], max_body_size=4096)
    return router, a


def inference_requests(fake) -> list:
    return [r for r in fake.requests if r.path in INFERENCE]


@pytest.mark.parametrize("path", INFERENCE)
@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "missing request body"),
        (b"{not json", 400, "invalid JSON in request body"),
        (b"[1, 2]", 400, "request body must be a JSON object"),
        (b'{"prompt": "x"}', 400, "model is required"),
        (b'{"model": ""}', 400, "model is required"),
        (b'{"model": 7}', 400, "model must be a string"),
        (b'{"model": "nope"}', 404, "model 'nope' not found"),
        (b'{"model": "llama3", "options": "fast"}', 400, "invalid type for 'options': expected an object"),
        (b'{"model": "\xff\xfe"}', 400, "invalid JSON in request body"),
    ],
)
async def test_rejected_in_ollamas_words(setup, http, path, body, status, message):
    router, a = setup
    async with http.post(router.url + path, data=body) as resp:
        assert resp.status == status
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        error = (await resp.json())["error"]
    assert error.startswith(message)
    assert inference_requests(a) == []


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/chat", {"model": "llama3", "messages": "hello"}, "invalid type for 'messages': expected an array"),
        ("/api/chat", {"model": "llama3", "stream": "yes"}, "invalid type for 'stream': expected a boolean"),
        ("/api/generate", {"model": "llama3", "prompt": 12}, "invalid type for 'prompt': expected a string"),
        ("/api/embed", {"model": "llama3", "input": [1, 2]}, "invalid input type"),
        ("/api/embed", {"model": "llama3", "input": {"a": 1}}, "invalid type for 'input'"),
    ],
)
async def test_wrong_field_types(setup, http, path, body, message):
    router, a = setup
    async with http.post(router.url + path, data=orjson.dumps(body)) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"].startswith(message)
    assert inference_requests(a) == []


async def test_body_over_the_limit_is_413(setup, http):
    router, a = setup
    body = orjson.dumps({"model": "llama3", "prompt": "x" * 10_000})
    async with http.post(router.url + "/api/generate", data=body) as resp:
        assert resp.status == 413
        assert (await resp.json()) == {"error": "request body too large"}
    assert inference_requests(a) == []


async def test_unknown_route_and_wrong_method_answer_like_ollama(setup, http):
    router, _ = setup
    async with http.get(router.url + "/api/nothing-here") as resp:
        assert (resp.status, await resp.text()) == (404, "404 page not found")
    async with http.get(router.url + "/api/chat") as resp:
        assert (resp.status, await resp.text()) == (405, "405 method not allowed")
    async with http.get(router.url + "/api/../../etc/passwd") as resp:
        assert resp.status == 404


async def test_the_real_client_sees_the_error_text(setup):
    router, _ = setup
    with pytest.raises(ollama.ResponseError) as info:
        await ollama.AsyncClient(host=router.url).generate(model="missing-model", prompt="hi")
    assert (info.value.status_code, info.value.error) == (404, "model 'missing-model' not found")


async def raw_exchange(url: str, head: bytes, timeout: float = 10.0) -> bytes:
    """Send `head` (request line, headers, maybe some body) and read what comes back until the
    router closes the connection or answers fully."""

    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()


async def test_a_claimed_length_over_the_limit_is_refused_before_the_body(setup):
    """A client announces 200 MB and sends 10 bytes of it: the 413 comes at once, in Ollama's
    words, and the connection is closed, without waiting for (or reading) the rest."""

    router, a = setup
    for path in ("/api/chat", "/v1/chat/completions"):
        answer = await raw_exchange(router.url, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    "Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
                                    '{"model":'.encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in head
        error = orjson.loads(body)["error"]
        assert (error if path == "/api/chat" else error["message"]) == "request body too large"
    assert inference_requests(a) == []


async def test_a_chunked_body_stops_at_the_limit(setup, http):
    router, a = setup

    async def chunks():
        yield b'{"model": "llama3", "prompt": "'
        for _ in range(100):
            yield b"x" * 1000

    async with http.post(router.url + "/api/generate", data=chunks()) as resp:
        assert resp.status == 413
    assert inference_requests(a) == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "gzip, identity", "x-unknown"])
async def test_compressed_request_bodies_are_refused_415(setup, http, encoding):
    """Ollama never inflates a request body; neither does the router (a 98 KiB gzip of zeros is
    99 MiB). Answered 415 in the route's dialect, with Accept-Encoding: identity."""

    router, a = setup
    body = gzip.compress(orjson.dumps({"model": "llama3", "prompt": "hi", "stream": False}))
    for path in ("/api/generate", "/v1/completions"):
        async with http.post(router.url + path, data=body, headers={"Content-Encoding": encoding}) as resp:
            assert resp.status == 415 and resp.headers["Accept-Encoding"] == "identity"
            error = (await resp.json())["error"]
            assert (error if path == "/api/generate" else error["message"]).startswith(
                "compressed request bodies are not supported")
    async with http.post(router.url + "/api/generate", data=zlib.decompress(body, 31),
                         headers={"Content-Encoding": "identity"}) as resp:
        assert resp.status == 200
    assert len(inference_requests(a)) == 1


@pytest.mark.parametrize("calls", [[{"function": "x"}], ["x"], [{"function": {"name": 7}}], {"function": {}}])
async def test_malformed_tool_calls_are_a_400_before_routing(backends, start_router, http, calls):
    """`tool_calls: [{"function": "x"}]` once raised AttributeError (500 and a traceback) when the
    chat was translated for an OpenAI-compatible backend; Ollama answers 400 to it."""

    vllm = await backends(FakeOpenAI("vllm", models=["llama3"]))
    router = await start_router([endpoint(vllm)])
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": calls}]
    async with http.post(router.url + "/api/chat", json={"model": "llama3", "messages": messages}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"].startswith("invalid type for 'messages[1].tool_calls")
    async with http.post(router.url + "/v1/chat/completions", json={"model": "llama3", "messages": messages}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"].startswith("messages[1].tool_calls")
    assert [r for r in vllm.requests if r.path != "/v1/models"] == []


def peak_memory_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


async def test_a_gzip_bomb_is_refused_without_inflating(fakes, daemon, http):
    """Eight clients at once send 98 KiB of gzip that inflates to 99 MiB each (once: 1.8 GiB of
    memory, the event loop blocked for 21 s, a healthy backend marked down). The daemon answers
    415 to each without inflating a byte: its peak memory grows by less than 30 MiB, the backend
    stays up, real requests are served. Then 100 bodies labelled gzip that are not gzip: 415
    each, and not one ERROR line or traceback in the log."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await daemon(f"endpoints:\n  - {a.url}\n")
    bomb = gzip.compress(b"\0" * (99 << 20), 9)
    assert len(bomb) < 110_000
    before = peak_memory_kib(router.process.pid)

    async def send(body: bytes) -> int:
        async with http.post(router.url + "/api/chat", data=body,
                             headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}) as resp:
            return resp.status

    assert await asyncio.gather(*(send(bomb) for _ in range(8))) == [415] * 8
    assert peak_memory_kib(router.process.pid) - before < 30 * 1024
    assert await asyncio.gather(*(send(b"this is not gzip at all " * 50) for _ in range(100))) == [415] * 100
    async with http.post(router.url + "/api/generate", json={"model": "llama3", "prompt": "x", "stream": False}) as r:
        assert r.status == 200
    await router.reload()  # something logged after them: the log is read up to here
    assert "Traceback" not in router.log and " ERROR " not in router.log and "is down" not in router.log
