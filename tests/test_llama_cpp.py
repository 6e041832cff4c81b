"""A real llama.cpp server behind the router, in both dialects.

`python -m llama_cpp.server` (llama-cpp-python, llama.cpp built from source by `make setup`)
serves two tiny random-weight GGUF models written by `tests/make_tiny_gguf.py`: `tiny-chat`
(with an embedded chat template) and `tiny-embed` (`embedding: true`, mean pooling). Requests use
temperature 0, so the random network answers deterministically. This runs in `make test`; set
NOMYO_SKIP_LLAMA=1 to skip it explicitly (a missing llama-cpp-python is a failure, not a skip).
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import ollama
import openai
import orjson
import pytest

pytestmark = pytest.mark.skipif(os.environ.get("NOMYO_SKIP_LLAMA") == "1", reason="NOMYO_SKIP_LLAMA=1")
KEY = "llama-key"
MESSAGES = [{"role": "user", "content": "hello, tell me about the sky"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    request = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {KEY}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"llama_cpp.server did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """The server's /v1 base URL; started once for this module, stopped at its end."""

    try:
        import llama_cpp.server  # noqa: F401

        from tests.make_tiny_gguf import write_models
    except ImportError as exc:
        pytest.fail(f"llama-cpp-python[server] and gguf are needed ({exc}): run `make setup`, "
                    "or set NOMYO_SKIP_LLAMA=1 to skip this test")
    directory = tmp_path_factory.mktemp("llama")
    chat, embed = write_models(directory)
    port = free_port()
    config = {"host": "127.0.0.1", "port": port, "api_key": KEY, "interrupt_requests": False, "models": [
        {"model": str(chat), "model_alias": "tiny-chat", "n_ctx": 512, "n_threads": 1, "verbose": False},
        {"model": str(embed), "model_alias": "tiny-embed", "embedding": True, "n_ctx": 512, "n_threads": 1,
         "verbose": False}]}
    (directory / "config.json").write_bytes(orjson.dumps(config))
    log = directory / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--config_file",
                                    str(directory / "config.json")], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_serving(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def router(llama_server, start_router):
    return await start_router([{"name": "llama", "url": llama_server, "type": "llama-server", "api_key": KEY,
                                "max_concurrent_connections": 1}])


def unit(vector) -> bool:
    return math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)


async def test_openai_dialect(router):
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    answer = await client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=6, temperature=0)
    assert isinstance(answer.choices[0].message.content, str)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens > 0
    stream = await client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=6, temperature=0,
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0  # counted by the router
    text = await client.completions.create(model="tiny-chat", prompt="the sky is", max_tokens=4, temperature=0)
    assert text.choices[0].finish_reason in ("stop", "length") and text.usage.prompt_tokens > 0
    streamed = await client.completions.create(model="tiny-chat", prompt="the sky is", max_tokens=4, temperature=0,
                                               stream=True)
    assert "".join([c.choices[0].text async for c in streamed]) == text.choices[0].text
    vectors = await client.embeddings.create(model="tiny-embed", input=["hello world", "the sky"])
    assert [len(d.embedding) for d in vectors.data] == [64, 64]
    assert vectors.data[0].embedding != vectors.data[1].embedding


async def test_ollama_dialect(router):
    client = ollama.AsyncClient(host=router.url)
    options = {"num_predict": 6, "temperature": 0}
    whole = await client.chat(model="tiny-chat", messages=MESSAGES, options=options)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.eval_count > 0
    assert whole.prompt_eval_count > 0
    parts = [p async for p in await client.chat(model="tiny-chat", messages=MESSAGES, options=options, stream=True)]
    assert "".join(p.message.content for p in parts) == whole.message.content
    final = parts[-1]
    assert final.done and final.done_reason in ("stop", "length") and final.eval_count > 0 and final.eval_duration > 0
    generated = await client.generate(model="tiny-chat", prompt="the sky is", options=options)
    assert generated.done and generated.eval_count > 0
    pieces = [p async for p in await client.generate(model="tiny-chat", prompt="the sky is", options=options,
                                                    stream=True)]
    assert "".join(p.response for p in pieces) == generated.response
    batch = await client.embed(model="tiny-embed", input=["hello world", "the sky", "red apple"])
    assert len(batch.embeddings) == 3 and all(len(v) == 64 and unit(v) for v in batch.embeddings)
    legacy = await client.embeddings(model="tiny-embed", prompt="hello world")
    norm = math.sqrt(sum(v * v for v in legacy.embedding))
    assert [v / norm for v in legacy.embedding] == pytest.approx(batch.embeddings[0], rel=1e-5)
