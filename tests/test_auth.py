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
    async with http.get(router.url + "/metrics", params={"api_key": KEY}) as resp:
        assert 'nomyo_caller_requests_total{caller="ci"} 2.0' in await resp.text()


def every_route(app) -> list[tuple[str, str]]:
    """(method, path) for every route the app serves, with path parameters filled in."""

    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if not path:
            continue
        path = (path.replace("{digest}", "sha256:" + "0" * 64).replace("{model:.+}", "llama3")
                .replace("{model}", "llama3").replace("{name}", "dashboard.js"))
        if info.get("prefix"):
            path = path.rstrip("/") + "/dashboard.js"
        found.append((route.method, path))
    return sorted(set(found))


async def test_every_route_group_is_guarded_in_its_dialect(guarded, http):
    """Walks the app's own route table, so a route added later is covered as well."""
    router, _ = guarded
    from nomyo.app import build_app

    routes = every_route(build_app(router.config))
    assert len(routes) > 30
    open_routes = {("GET", "/"), ("HEAD", "/"), ("GET", "/static/dashboard.js"), ("HEAD", "/static/dashboard.js")}
    for method, path in routes:
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 403)):
            async with http.request(method, router.url + path, headers=headers, data=b"{}") as resp:
                if (method, path) in open_routes:
                    assert resp.status < 400, (method, path)
                    continue
                assert resp.status == status, (method, path, resp.status)
                if method == "HEAD":
                    continue
                body = await resp.json()
                if path.startswith("/v1/") or path == "/rerank":
                    assert body["error"]["type"] in ("authentication_error", "permission_error"), path
                else:
                    assert isinstance(body["error"], str), path


async def test_both_key_forms_open_each_route_group(guarded, http):
    router, _ = guarded
    for path in ("/api/tags", "/v1/models", "/api/usage", "/api/config", "/health", "/metrics", "/api/ps_details"):
        async with http.get(router.url + path, headers={"Authorization": f"Bearer {KEY}"}) as resp:
            assert resp.status == 200, path
        async with http.get(router.url + path, params={"api_key": KEY}) as resp:
            assert resp.status == 200, path


async def test_backend_keys_are_sent_but_never_logged(fakes, start_router, http, caplog):
    caplog.set_level(logging.DEBUG, logger="nomyo")
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([{"name": "a", "url": a.url, "api_key": "backend-secret-123"}])
    body = orjson.dumps({"model": "llama3", "prompt": "hi", "stream": False})
    async with http.post(router.url + "/api/generate", data=body) as resp:
        assert resp.status == 200
    sent = [r.headers.get("Authorization") for r in a.requests if r.path == "/api/generate"]
    assert sent == ["Bearer backend-secret-123"]
    assert "backend-secret-123" not in caplog.text


async def test_admin_keys_guard_the_management_routes(fakes, start_router, http):
    """With admin keys configured, a router key serves models but cannot pull, push, create,
    copy, delete, upload blobs or trim the usage history: 403 there (401 without a key). An
    admin key opens everything, and the access log names its holder."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], router_api_keys={"app": KEY}, admin_api_keys={"ops": "adm1n-key"})
    user, admin = {"Authorization": f"Bearer {KEY}"}, {"Authorization": "Bearer adm1n-key"}
    digest = "sha256:" + "0" * 64
    management = [("POST", "/api/pull", {"model": "llama3"}), ("POST", "/api/push", {"model": "llama3"}),
                  ("POST", "/api/create", {"model": "x", "from": "llama3"}),
                  ("POST", "/api/copy", {"source": "llama3", "destination": "y"}),
                  ("DELETE", "/api/delete", {"model": "y"}), ("HEAD", f"/api/blobs/{digest}", None),
                  ("POST", f"/api/blobs/{digest}", None), ("POST", "/api/aggregate_time_series_days", {"days": 30})]
    for method, path, body in management:
        for headers, status in (({}, 401), (user, 403)):
            async with http.request(method, router.url + path, json=body, headers=headers) as resp:
                assert resp.status == status, (method, path)
                if method != "HEAD" and status == 403:
                    assert (await resp.json())["error"] == "this route needs an admin key (admin_api_keys)"
    assert not [r for r in a.requests if r.method != "GET"]
    for path in ("/api/tags", "/api/ps_details", "/metrics"):
        for headers in (user, admin):
            async with http.get(router.url + path, headers=headers) as resp:
                assert resp.status == 200, path
    copy = {"source": "llama3", "destination": "y"}
    async with http.post(router.url + "/api/copy", json=copy, headers=admin) as resp:
        assert resp.status == 200
    async with http.delete(router.url + "/api/delete", json={"model": "y"}, headers=admin) as resp:
        assert resp.status == 200
    async with http.get(router.url + "/metrics", headers=admin) as resp:
        assert 'nomyo_caller_requests_total{caller="ops"}' in await resp.text()


async def test_admin_keys_alone_leave_the_other_routes_open(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], admin_api_keys={"ops": "adm1n-key"})
    async with http.get(router.url + "/api/tags") as resp:
        assert resp.status == 200
    async with http.delete(router.url + "/api/delete", json={"model": "llama3"}) as resp:
        assert resp.status == 401
    async with http.delete(router.url + "/api/delete", json={"model": "llama3"},
                           headers={"Authorization": "Bearer nope"}) as resp:
        assert resp.status == 403 and (await resp.json())["error"] == "invalid API key"


async def test_health_may_be_open_for_load_balancer_probes(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], router_api_keys={"app": KEY}, health_requires_key=False)
    async with http.get(router.url + "/health") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    async with http.head(router.url + "/health") as resp:
        assert resp.status == 200
    for path in ("/api/config", "/metrics", "/api/tags"):
        async with http.get(router.url + path) as resp:
            assert resp.status == 401, path
