"""Self-tests of the fake Ollama: the real ``ollama`` client talks directly to it.

If the real client can parse everything the fake sends, and the raw bytes match the reference
(/work/shared/reference/ollama-api.md), router tests built on the fake test the real thing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import signal
import sys
from pathlib import Path

import aiohttp
import httpx
import ollama
import pytest
import pytest_asyncio

from tests.fakes.__main__ import parse_fakes
from tests.fakes.ollama_backend import FakeOllama
from tests.fakes.ollama_formats import decode_body, model_key, parse_keep_alive, rfc3339nano_utc, word_tokens

REPO = Path(__file__).resolve().parents[2]
CREATED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = (
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
)


@pytest_asyncio.fixture
async def fake():
    f = FakeOllama(name="t", models=("llama3:latest", "qwen3:0.6b", "nomic-embed-text"), loaded=("llama3",))
    await f.start()
    yield f
    await f.stop()


@pytest_asyncio.fixture
async def client(fake):
    c = ollama.AsyncClient(host=fake.url)
    yield c
    await c.close()


async def raw(fake, method, path, body=None, headers=None):
    """One request with aiohttp; returns (status, headers, bytes)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as s, s.request(method, fake.url + path, data=data, headers=headers) as r:
        return r.status, r.headers, await r.read()


def ndjson(data: bytes) -> list[dict]:
    assert data.endswith(b"\n") and b"\n\n" not in data and not data.startswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


# ---------------------------------------------------------------- formats (pure)


def test_pure_helpers():
    assert model_key("Llama3") == model_key("llama3:latest") == model_key("registry.ollama.ai/library/llama3")
    assert model_key("user/m") == "user/m:latest"
    assert "".join(word_tokens("  Hello big  world ")) == "  Hello big  world "
    assert CREATED_AT.match(rfc3339nano_utc(1_700_000_000_120_000_000)).group(1) == ".12"
    assert rfc3339nano_utc(1_700_000_000_000_000_000).endswith(":20Z")
    assert parse_keep_alive("1h30m", 0) == 5400 and parse_keep_alive(-1, 0) == math.inf
    assert parse_keep_alive(None, 7) == 7 and parse_keep_alive("0", 7) == 0
    assert decode_body(b"null", "X") == {} and decode_body(b'{"a":1} trailing', "X") == {"a": 1}


# ---------------------------------------------------------------- chat / generate


async def test_chat_stream_with_async_client(fake, client):
    parts = [
        p
        async for p in await client.chat(model="llama3", messages=[{"role": "user", "content": "hi you"}], stream=True)
    ]
    assert "".join(p.message.content for p in parts) == "Hello from t"
    assert [p.done for p in parts] == [False, False, False, True]
    last = parts[-1]
    assert last.done_reason == "stop" and last.eval_count == 3 and last.prompt_eval_count == 2
    assert last.total_duration >= last.load_duration > 0 and last.eval_duration > 0
    assert all(p.model == "llama3" and CREATED_AT.match(p.created_at) for p in parts)
    assert fake.served == 1 and fake.active == 0 and fake.max_active_by_model == {"llama3:latest": 1}


async def test_chat_and_generate_with_sync_client(fake):
    with ollama.Client(host=fake.url) as c:
        await sync_calls(fake, c)


async def sync_calls(fake, c):
    r = await asyncio.to_thread(c.chat, model="LLAMA3:latest", messages=[{"role": "user", "content": "x"}])
    assert r.message.role == "assistant" and r.message.content == "Hello from t" and r.done_reason == "stop"
    assert r.model == "LLAMA3:latest"
    g = await asyncio.to_thread(c.generate, model="qwen3:0.6b", prompt="why", options={"num_predict": 5})
    assert g.response == "Hello from t Hello from" and g.done_reason == "length" and g.eval_count == 5
    assert g.context and all(isinstance(i, int) for i in g.context)
    stream = await asyncio.to_thread(lambda: list(c.generate(model="qwen3:0.6b", prompt="a b c", stream=True)))
    assert "".join(p.response for p in stream) == "Hello from t" and stream[-1].prompt_eval_count == 3
    assert fake.requests[0].json == {
        "model": "LLAMA3:latest",
        "stream": False,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [],
    }


async def test_raw_chat_stream_bytes(fake):
    status, headers, data = await raw(
        fake, "POST", "/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    assert headers["Transfer-Encoding"] == "chunked"
    lines = ndjson(data)
    assert data.startswith(b'{"model":"llama3","created_at":"')
    assert list(lines[0]) == ["model", "created_at", "message", "done"]
    assert lines[0]["message"] == {"role": "assistant", "content": "Hello"}
    assert list(lines[-1]) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert lines[-1]["message"] == {"role": "assistant", "content": ""}
    status, headers, data = await raw(fake, "POST", "/api/generate", {"model": "llama3", "prompt": "p"})
    lines = ndjson(data)
    assert list(lines[0]) == ["model", "created_at", "response", "done"]
    assert list(lines[-1]) == ["model", "created_at", "response", "done", "done_reason", "context", *METRICS]
    status, headers, data = await raw(
        fake, "POST", "/api/generate", {"model": "llama3", "prompt": "p", "stream": False, "raw": True}
    )
    assert headers["Content-Type"] == "application/json; charset=utf-8" and not data.endswith(b"\n")
    assert "context" not in json.loads(data) and json.loads(data)["response"] == "Hello from t"


async def test_html_is_escaped_like_go(fake):
    fake.reply = "<b>&"
    _, _, data = await raw(fake, "POST", "/api/generate", {"model": "llama3", "prompt": "p", "stream": False})
    assert b'"response":"\\u003cb\\u003e\\u0026"' in data and json.loads(data)["response"] == "<b>&"


async def test_load_unload_and_keep_alive(fake, client):
    r = await client.generate(model="qwen3:0.6b", prompt="")
    assert (r.done_reason, r.response, r.eval_count) == ("load", "", None)
    assert {m.model for m in (await client.ps()).models} == {"llama3:latest", "qwen3:0.6b"}
    r = await client.chat(model="qwen3:0.6b", messages=[], keep_alive=0)
    assert r.done_reason == "unload" and r.message.content == ""
    assert fake.loaded == ["llama3:latest"]
    await client.chat(model="qwen3:0.6b", messages=[{"role": "user", "content": "x"}], keep_alive=0.2)
    assert "qwen3:0.6b" in fake.loaded
    await asyncio.sleep(0.25)
    assert "qwen3:0.6b" not in fake.loaded
    await client.generate(model="qwen3:0.6b", prompt="x", keep_alive=-1)
    ps = (await client.ps()).models
    assert ps[0].model == "qwen3:0.6b" and ps[0].expires_at.year > 2200  # "forever" sorts first


async def test_load_delay_is_reported(fake, client):
    fake.load_delay = 0.05
    r = await client.generate(model="qwen3:0.6b", prompt="x")
    assert r.load_duration >= 50_000_000
    r = await client.generate(model="qwen3:0.6b", prompt="x")
    assert r.load_duration < 50_000_000


# ---------------------------------------------------------------- embeddings


async def test_embed_and_embeddings(fake, client):
    r = await client.embed(model="nomic-embed-text", input=["one two", "three"])
    assert len(r.embeddings) == 2 and all(len(v) == 8 for v in r.embeddings)
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-5 for v in r.embeddings)
    assert r.prompt_eval_count == 3 and r.model == "nomic-embed-text"
    again = await client.embed(model="nomic-embed-text", input="three")
    assert again.embeddings == [r.embeddings[1]]
    assert (await client.embed(model="nomic-embed-text", input=[])).embeddings == []
    legacy = await client.embeddings(model="nomic-embed-text", prompt="three")
    assert len(legacy.embedding) == 8 and abs(math.fsum(x * x for x in legacy.embedding) - 1) > 1e-3
    status, _, data = await raw(fake, "POST", "/api/embed", {"model": "nomic-embed-text", "input": 3})
    assert (status, json.loads(data)) == (400, {"error": "invalid input type"})
    status, _, data = await raw(fake, "POST", "/api/embeddings", {"model": "nope", "prompt": "x"})
    assert (status, json.loads(data)) == (404, {"error": 'model "nope" not found, try pulling it first'})
    status, _, data = await raw(
        fake, "POST", "/api/chat", {"model": "nomic-embed-text", "messages": [{"role": "user", "content": "x"}]}
    )
    assert (status, json.loads(data)) == (400, {"error": '"nomic-embed-text" does not support chat'})


# ---------------------------------------------------------------- model management


async def test_list_ps_show(fake, client):
    listed = await client.list()
    assert [m.model for m in listed.models] == ["llama3:latest", "qwen3:0.6b", "nomic-embed-text:latest"]
    assert listed.models[0].digest == hashlib.sha256(b"llama3:latest").hexdigest()
    ps = await client.ps()
    assert [m.model for m in ps.models] == ["llama3:latest"] and ps.models[0].size_vram > 0
    show = await client.show("llama3")
    assert show.modelinfo["general.architecture"] == "llama" and "completion" in show.capabilities
    with pytest.raises(ollama.ResponseError) as err:
        await client.show("missing")
    assert (err.value.status_code, err.value.error) == (404, "model 'missing' not found")
    _, headers, data = await raw(fake, "GET", "/api/tags")
    entry = json.loads(data)["models"][0]
    assert list(entry) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    _, _, data = await raw(fake, "GET", "/api/ps")
    assert list(json.loads(data)["models"][0])[-3:] == ["expires_at", "size_vram", "context_length"]
    assert (await raw(fake, "HEAD", "/api/tags"))[0] == 200 and (await raw(fake, "HEAD", "/api/ps"))[0] == 405
    fake.set_loaded(["qwen3:0.6b"])
    assert fake.loaded == ["qwen3:0.6b"]
    fake.set_models([])
    assert (await raw(fake, "GET", "/api/tags"))[2] == b'{"models":[]}'


async def test_pull_copy_delete(fake, client):
    parts = [p async for p in await client.pull("phi3:mini", stream=True)]
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    assert any(p.completed == p.total and p.digest for p in parts)
    assert "phi3:mini" in fake.models
    assert (await client.pull("tinyllama")).status == "success" and "tinyllama:latest" in fake.models
    assert (await client.copy("phi3:mini", "phi3-copy")).status == "success"
    assert "phi3-copy:latest" in fake.models
    assert (await client.delete("phi3-copy")).status == "success"
    assert "phi3-copy:latest" not in fake.models
    with pytest.raises(ollama.ResponseError) as err:
        await client.copy("nope", "x")
    assert (err.value.status_code, err.value.error) == (404, 'model "nope" not found')
    with pytest.raises(ollama.ResponseError) as err:
        await client.delete("nope")
    assert (err.value.status_code, err.value.error) == (404, "model 'nope' not found")
    status, _, data = await raw(fake, "POST", "/api/copy", {"source": "llama3", "destination": "l2"})
    assert (status, data) == (200, b"")
    fake.pullable = {"only:latest"}
    status, headers, data = await raw(fake, "POST", "/api/pull", {"model": "other"})
    assert ndjson(data)[-1] == {"error": "pull model manifest: file does not exist"}
    status, headers, data = await raw(fake, "POST", "/api/pull", {"model": "other", "stream": False})
    assert (status, headers["Content-Type"]) == (500, "application/json")


async def test_fail_pull_breaks_a_download_midway(fake, client):
    fake.fail_pull(after_steps=3)
    _, _, data = await raw(fake, "POST", "/api/pull", {"model": "phi3:mini"})
    lines = ndjson(data)
    assert len(lines) == 4 and lines[1]["digest"] and lines[-1] == {"error": "max retries exceeded: unexpected EOF"}
    assert "phi3:mini" not in fake.models
    fake.fail_pull(error="disk full")
    with pytest.raises(ollama.ResponseError) as err:
        await client.pull("phi3:mini")
    assert (err.value.status_code, err.value.error) == (500, "disk full")
    assert (await client.pull("phi3:mini")).status == "success" and "phi3:mini" in fake.models


async def test_push_create_blobs(fake, client, tmp_path):
    pushed = [p.status async for p in await client.push("llama3", stream=True)]
    assert pushed[0] == "retrieving manifest" and pushed[-2:] == ["pushing manifest", "success"]
    made = [p.status async for p in await client.create("mine", from_="llama3", system="be brief", stream=True)]
    assert made[-2:] == ["writing manifest", "success"] and "mine:latest" in fake.models
    path = tmp_path / "w.gguf"
    path.write_bytes(b"GGUF fake weights")
    digest = await client.create_blob(path)
    assert digest == "sha256:" + hashlib.sha256(b"GGUF fake weights").hexdigest()
    assert (await raw(fake, "HEAD", f"/api/blobs/{digest}"))[0] == 200
    assert (await raw(fake, "POST", f"/api/blobs/{digest}", b"GGUF fake weights"))[0] == 200
    assert (await client.create("fromfile", files={"w.gguf": digest})).status == "success"
    assert "fromfile:latest" in fake.models
    other = "sha256:" + "0" * 64
    assert (await raw(fake, "HEAD", f"/api/blobs/{other}"))[0] == 404
    status, _, data = await raw(fake, "POST", f"/api/blobs/{other}", b"x")
    assert status == 400 and json.loads(data)["error"].startswith('digest mismatch, expected "sha256:000')
    with pytest.raises(ollama.ResponseError) as err:
        await client.create("x")
    assert err.value.error == "neither 'from' or 'files' was specified"


# ---------------------------------------------------------------- errors and routing


async def test_error_shapes(fake):
    cases = [
        ("POST", "/api/chat", b"", 400, {"error": "missing request body"}),
        (
            "POST",
            "/api/chat",
            b"{x",
            400,
            {"error": "invalid character 'x' looking for beginning of object key string"},
        ),
        ("POST", "/api/chat", b'{"model":', 400, {"error": "unexpected EOF"}),
        ("POST", "/api/chat", b"{}", 400, {"error": "model is required"}),
        ("POST", "/api/generate", b"{}", 404, {"error": "model '' not found"}),
        ("POST", "/api/chat", b'{"model":"Nope"}', 404, {"error": "model 'Nope' not found"}),
        ("POST", "/api/show", b"{}", 400, {"error": "model is required"}),
        (
            "POST",
            "/api/chat",
            b'{"model":"llama3","messages":1}',
            400,
            {"error": "json: cannot unmarshal number into Go struct field ChatRequest.messages of type []api.Message"},
        ),
        (
            "POST",
            "/api/generate",
            b'{"model":"llama3","keep_alive":"5"}',
            400,
            {"error": 'time: missing unit in duration "5"'},
        ),
    ]
    for method, path, body, status, error in cases:
        got_status, headers, data = await raw(fake, method, path, body)
        assert (got_status, json.loads(data)) == (status, error), (path, body)
        assert headers["Content-Type"] == "application/json; charset=utf-8"
    status, headers, data = await raw(fake, "GET", "/api/nope")
    assert (status, headers["Content-Type"], data) == (404, "text/plain", b"404 page not found")
    status, headers, data = await raw(fake, "GET", "/api/chat")
    assert (status, headers["Content-Type"], data) == (405, "text/plain", b"405 method not allowed")
    status, headers, data = await raw(fake, "GET", "/")
    assert (status, headers["Content-Type"], data) == (200, "text/plain; charset=utf-8", b"Ollama is running")
    assert (await raw(fake, "HEAD", "/"))[0] == 200
    status, headers, data = await raw(fake, "GET", "/api/version")
    assert (status, data) == (200, b'{"version":"0.12.3"}')


async def test_host_header_guard(fake):
    assert (await raw(fake, "GET", "/", headers={"Host": "evil.example.com"}))[0] == 403
    assert (await raw(fake, "GET", "/api/tags", headers={"Host": "evil.example.com:11434"}))[0] == 403
    for ok in ("localhost", "localhost:1", "127.0.0.1:9", "[::1]:5", "box.local", "10.1.2.3:80", "a.internal"):
        assert (await raw(fake, "GET", "/", headers={"Host": ok}))[0] == 200, ok
    assert fake.rejected_hosts == ["evil.example.com", "evil.example.com:11434"]
    fake.strict_host = True
    assert (await raw(fake, "GET", "/", headers={"Host": "127.0.0.1:1"}))[0] == 403
    assert (await raw(fake, "GET", "/"))[0] == 200


# ---------------------------------------------------------------- scripting


async def test_fail_next_and_midstream(fake, client):
    fake.fail_next(503, "server busy, please try again.  maximum pending requests exceeded")
    stream = await client.chat(model="llama3", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(ollama.ResponseError) as err:  # streams are lazy: the request starts on iteration
        await anext(stream)
    assert err.value.status_code == 503 and err.value.error.startswith("server busy")
    fake.fail_midstream(after_tokens=2)
    got = []
    with pytest.raises(ollama.ResponseError) as err:
        async for p in await client.generate(model="llama3", prompt="x", stream=True):
            got.append(p.response)
    assert got == ["Hello", " from"] and err.value.error == "an error was encountered while running the model"
    fake.cut_next(after_tokens=1)
    with pytest.raises(httpx.RemoteProtocolError):
        async for _ in await client.generate(model="llama3", prompt="x", stream=True):
            pass
    assert (fake.served, fake.failed) == (0, 3)
    assert (await client.generate(model="llama3", prompt="x")).response == "Hello from t"


async def test_reset_and_garbage(fake):
    """reset_next: no status line at all; garble_next: a stream that breaks its format and ends
    without done, a 200 JSON answer that is not JSON, bytes that are not HTTP."""
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "x"}]}
    fake.reset_next()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await raw(fake, "POST", "/api/chat", chat)
    fake.garble_next("stream", after_tokens=1)
    status, headers, data = await raw(fake, "POST", "/api/chat", chat)
    assert (status, headers["Content-Type"]) == (200, "application/x-ndjson")
    first, *rest = data.split(b"\n")
    assert json.loads(first)["message"]["content"] == "Hello" and b'"done":true' not in data
    for line in filter(None, rest):
        with pytest.raises(ValueError):
            json.loads(line)
    for stream in (True, False):
        fake.garble_next("json")
        status, headers, data = await raw(fake, "POST", "/api/chat", chat | {"stream": stream})
        assert (status, headers["Content-Type"]) == (200, "application/json")
        with pytest.raises(ValueError):
            json.loads(data)
    fake.garble_next("http")
    with pytest.raises(aiohttp.ClientResponseError, match="Bad status line"):
        await raw(fake, "POST", "/api/generate", {"model": "llama3", "prompt": "x"})
    assert (fake.served, fake.failed) == (0, 5)
    assert ndjson((await raw(fake, "POST", "/api/chat", chat))[2])[-1]["done"] is True


async def test_hang_gate_parallel_and_disconnect(fake, client):
    fake.hang()
    task = asyncio.create_task(client.generate(model="llama3", prompt="x"))
    await fake.wait_until(lambda: fake.active == 1)
    await asyncio.sleep(0.02)
    assert not task.done()
    fake.release()
    assert (await task).response == "Hello from t"

    fake.gate = asyncio.Event()
    fake.num_parallel = 1
    first = []

    async def consume():
        async for p in await client.chat(model="llama3", messages=[{"role": "user", "content": "x"}], stream=True):
            first.append(p.message.content)

    tasks = [asyncio.create_task(consume()) for _ in range(2)]
    await fake.wait_until(lambda: fake.active == 2 and len(first) == 1)
    await asyncio.sleep(0.02)
    assert first == ["Hello"]  # the second request waits for the only slot
    fake.gate.set()
    await asyncio.gather(*tasks)
    assert fake.max_active == 2 and fake.max_active_by_model["llama3:latest"] == 2

    fake.gate = asyncio.Event()
    stream = await client.generate(model="llama3", prompt="x", stream=True)
    assert (await anext(stream)).response == "Hello"
    await stream.aclose()  # the client goes away mid-stream
    await fake.wait_until(lambda: fake.disconnects == 1 and fake.active == 0)


async def test_go_down_and_come_back(fake, client):
    await fake.go_down()
    with pytest.raises(ConnectionError):
        await client.list()
    await fake.come_back()
    assert len((await client.list()).models) == 3


async def test_token_delay_paces_the_stream(fake, client):
    fake.token_delay = 0.03
    loop = asyncio.get_running_loop()
    start = loop.time()
    parts = [p async for p in await client.generate(model="llama3", prompt="x", stream=True)]
    assert loop.time() - start >= 0.09  # three tokens, each "generated" for 30 ms
    assert parts[-1].eval_duration >= 90_000_000 and parts[-1].eval_count == 3


# ---------------------------------------------------------------- CLI


def test_cli_groups_options_per_port():
    configs, verbose = parse_fakes(
        ["--token-delay", "0.05", "--port", "1", "--models", "a,b", "--port=2", "--name", "z", "--token-delay", "0"]
    )
    assert [(c.port, c.name, c.models, c.token_delay) for c in configs] == [
        (1, "a", ["a", "b"], 0.05),
        (2, "z", ["llama3:latest"], 0.0),
    ]
    assert not verbose and parse_fakes([])[0][0].port == 0


async def test_cli_runs_until_sigterm():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes",
        "--port",
        "0",
        "--name",
        "cli",
        "--models",
        "m1,m2",
        "--port",
        "0",
        "--loaded",
        "llama3",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 10)).decode() for _ in range(2)]
        match = re.fullmatch(r"fake ollama cli listening on (http://127\.0\.0\.1:\d+)\n", lines[0])
        assert match and lines[1].startswith("fake ollama b listening on http://127.0.0.1:")
        async with ollama.AsyncClient(host=match.group(1)) as cli:
            listed = await cli.list()
        assert [m.model for m in listed.models] == ["m1:latest", "m2:latest"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
