"""The router's own API key: header or query, 401/403 in Ollama's words, never forwarded or logged."""

from __future__ import annotations

import logging

import ollama
import orjson
import pytest

KEY = "s3cret-router-key"


@pytest.fixture
async def guarded(fakes, start_router):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], router_api_keys={"ci": KEY})
    return router, a


async def test_missing_and_wrong_keys(guarded, http):
    router, _ = guarded
    async with http.get(router.url + "/api/tags") as resp:
        assert resp.status == 401 and "missing API key" in (await resp.json())["error"]
    async with http.get(router.url + "/api/tags", headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 403 and (await resp.json()) == {"error": "invalid API key"}
    async with http.get(router.url + "/") as resp:  # liveness stays open
        assert resp.status == 200


async def test_header_and_query_keys_work_and_never_travel_or_show(guarded, http, caplog):
    router, a = guarded
    caplog.set_level(logging.INFO, logger="nomyo")
    body = orjson.dumps({"model": "llama3", "prompt": "hi", "stream": False})
    async with http.post(router.url + f"/api/generate?api_key={KEY}", data=body) as resp:
        assert resp.status == 200
    client = ollama.AsyncClient(host=router.url, headers={"Authorization": f"Bearer {KEY}"})
    assert (await client.generate(model="llama3", prompt="hi")).response == "Hello from a"
    generated = [r for r in a.requests if r.path == "/api/generate"]
    assert len(generated) == 2
    assert all("Authorization" not in r.headers for r in generated)
    assert KEY not in caplog.text
    assert "caller=ci" in caplog.text
