"""Bad input gets a clear 4xx in Ollama's dialect and never reaches (or holds a slot on) a backend."""

from __future__ import annotations

import ollama
import orjson
import pytest

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
