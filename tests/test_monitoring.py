"""Monitoring endpoints: /health, /api/config, live gauges in /metrics, and `/` for browsers."""

from __future__ import annotations

import asyncio

import orjson

from nomyo.poller import parse_expiry
from tests.conftest import eventually
from tests.test_usage import metric, samples

STREAM = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}


async def get_json(http, url: str) -> tuple[int, dict]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def test_health_is_200_while_one_backend_is_up(fakes, start_router, http):
    a = await fakes("a")
    b = await fakes("b", version="0.11.0")
    router = await start_router([a, b])
    status, body = await get_json(http, router.url + "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["endpoints"]["b"] == {"url": b.url, "status": "ok", "version": "0.11.0"}

    await b.go_down()
    await eventually(lambda: not router.backend("b").status.healthy, what="b marked down")
    status, body = await get_json(http, router.url + "/health")
    assert status == 200 and body["status"] == "degraded" and body["healthy_backends"] == 1
    assert body["endpoints"]["b"]["status"] == "error" and "cannot connect" in body["endpoints"]["b"]["detail"]

    await a.go_down()
    await eventually(lambda: not router.backend("a").status.healthy, what="a marked down")
    status, body = await get_json(http, router.url + "/health")
    assert status == 503 and body["status"] == "error" and body["healthy_backends"] == 0

    status, config = await get_json(http, router.url + "/api/config")
    assert status == 200 and config["require_router_api_key"] is False
    assert [(e["name"], e["url"], e["status"]) for e in config["endpoints"]] == [("a", a.url, "error"),
                                                                                 ("b", b.url, "error")]
    assert all("detail" in e and "version" not in e for e in config["endpoints"])
    await b.come_back()
    await eventually(lambda: router.backend("b").status.healthy, what="b back")
    status, config = await get_json(http, router.url + "/api/config")
    entry = config["endpoints"][1]
    assert (entry["status"], entry["version"], entry["model_names"]) == ("ok", "0.11.0", ["llama3:latest"])


async def test_metrics_show_slots_queue_and_loaded_models(fakes, start_router, http):
    """a has one slot for llama3 and the model loaded: one stream holds the slot, a second waits.
    /metrics shows both, the limit, the backend up, and Ollama's expiry and VRAM for the model."""

    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()
    router = await start_router([a], slots=1)
    first = asyncio.create_task(http.post(router.url + "/api/chat", data=orjson.dumps(STREAM)))
    await a.wait_until(lambda: a.active == 1)
    second = asyncio.create_task(http.post(router.url + "/api/chat", data=orjson.dumps(STREAM)))
    await eventually(lambda: router.ledger.queued == 1, what="one request queued")

    async with http.get(router.url + "/metrics") as resp:
        found = samples(await resp.text())
    labels = {"backend": "a", "model": "llama3:latest"}
    assert metric(found, "nomyo_inflight_requests", **labels) == 1
    assert metric(found, "nomyo_queued_requests", model="llama3:latest") == 1
    assert metric(found, "nomyo_queue_length") == 1
    assert metric(found, "nomyo_slots", **labels) == 1
    assert metric(found, "nomyo_backend_up", backend="a", url=a.url, type="ollama") == 1
    assert metric(found, "nomyo_backend_info", backend="a", version="0.12.3") == 1
    async with http.get(a.url + "/api/ps", headers={"Host": f"127.0.0.1:{a.port}"}) as resp:
        ps = (await resp.json())["models"][0]
    assert metric(found, "nomyo_model_loaded_size_vram_bytes", **labels) == ps["size_vram"]
    assert abs(metric(found, "nomyo_model_loaded_expires_at_seconds", **labels) - parse_expiry(ps["expires_at"])) < 1

    a.gate.set()
    for task in (first, second):
        resp = await task
        assert resp.status == 200
        await resp.read()
    await router.settled()
    async with http.get(router.url + "/metrics") as resp:
        found = samples(await resp.text())
    assert metric(found, "nomyo_inflight_requests", **labels) == 0 and metric(found, "nomyo_queue_length") == 0
    await a.go_down()
    await eventually(lambda: not router.backend("a").status.healthy, what="a down")
    async with http.get(router.url + "/metrics") as resp:
        found = samples(await resp.text())
    assert metric(found, "nomyo_backend_up", backend="a", url=a.url, type="ollama") == 0


async def test_root_serves_the_dashboard_to_browsers_only(fakes, start_router, http):
    a = await fakes("a")
    router = await start_router([a])
    async with http.get(router.url + "/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert '<script src="/static/dashboard.js"' in page and "http" not in page.replace("http-equiv", "")
    for accept in ("*/*", "application/json", None):
        headers = {"Accept": accept} if accept else {"Accept": ""}
        async with http.get(router.url + "/", headers=headers) as resp:
            assert (resp.status, await resp.text()) == (200, "Ollama is running")
    async with http.head(router.url + "/") as resp:
        assert resp.status == 200
    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "text/css")):
        async with http.get(f"{router.url}/static/{name}") as resp:
            assert resp.status == 200 and kind in resp.headers["Content-Type"]


async def test_router_key_guards_the_api_not_the_page(fakes, start_router, http):
    a = await fakes("a")
    router = await start_router([a], **{"nomyo-router-api-key": "s3cret"})
    async with http.get(router.url + "/", headers={"Accept": "text/html"}) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
    async with http.get(router.url + "/static/dashboard.js") as resp:
        assert resp.status == 200
    for path in ("/api/usage", "/api/config", "/metrics", "/health", "/api/usage-stream"):
        async with http.get(router.url + path) as resp:
            assert resp.status == 401, path
    async with http.get(router.url + "/api/config?api_key=s3cret") as resp:
        assert resp.status == 200 and (await resp.json())["require_router_api_key"] is True
    async with http.get(router.url + "/metrics", headers={"Authorization": "Bearer s3cret"}) as resp:
        assert resp.status == 200
    async with http.get(router.url + "/api/usage-stream?api_key=s3cret") as resp:
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b"data: ")


async def test_usage_and_stream_carry_slot_limits_circuits_and_timings(fakes, start_router, http):
    """1. gpu-a has 2 slots, gpu-b 1; gpu-b fails three requests and its circuit opens.  2. Two
    streams complete on gpu-a, then one is held there.  3. /api/usage gives the held pair's slot
    limit ("1 of 2" needs no /api/config); the first usage-stream event has it too, each
    backend's circuit and recent errors, and llama3's time to first token and duration."""

    a = await fakes("gpu-a", models=["llama3:latest"], loaded=["llama3:latest"])
    b = await fakes("gpu-b", models=["qwen2:latest"], loaded=["qwen2:latest"])
    router = await start_router([{"name": "gpu-a", "url": a.url, "max_concurrent_connections": 2},
                                 {"name": "gpu-b", "url": b.url, "max_concurrent_connections": 1}],
                                breaker_cooldown=120)
    b.fail_next(502, "bad gateway", count=3)
    for _ in range(3):
        async with http.post(router.url + "/api/generate", json={"model": "qwen2", "prompt": "x"}) as resp:
            assert resp.status == 502
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        async with http.post(router.url + "/api/chat", json=chat) as resp:
            assert resp.status == 200
            await resp.read()
    a.gate = asyncio.Event()
    held = asyncio.create_task(http.post(router.url + "/api/chat", json=chat))
    try:
        await a.wait_until(lambda: a.active == 1)
        async with http.get(router.url + "/api/usage") as resp:
            usage = await resp.json()
        assert usage["usage_counts"] == {"gpu-a": {"llama3:latest": 1}}
        assert usage["slot_limits"] == {"gpu-a": {"llama3:latest": 2}}
        async with http.get(router.url + "/api/usage-stream") as resp:
            first = orjson.loads((await resp.content.readline()).removeprefix(b"data: "))
    finally:
        a.gate.set()
        async with await held as resp:
            await resp.read()
    assert first["slot_limits"] == {"gpu-a": {"llama3:latest": 2}}
    backends = {view["name"]: view for view in first["backends"]}
    assert (backends["gpu-a"]["circuit"], backends["gpu-a"]["errors"]) == ("closed", 0)
    assert (backends["gpu-b"]["circuit"], backends["gpu-b"]["errors"]) == ("open", 3)
    assert backends["gpu-b"]["last_error"]
    timing = first["models"]["llama3:latest"]
    assert timing["requests"] == 2 and first["window_seconds"] == 300
    assert 0 <= timing["ttft_p50"] <= timing["ttft_p95"] <= timing["duration_p95"]
    assert 0 < timing["duration_p50"] <= timing["duration_p95"]
    await router.settled()
