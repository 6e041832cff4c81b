"""Browsers: pages of allowed origins may call the router (as they may call Ollama), other pages
may not, and a rebinding `Host` gets nowhere while the router listens on loopback."""

from __future__ import annotations

import asyncio

import pytest

from tests.daemon_process import DaemonProcess

CHAT = {"model": "llama3", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


async def test_preflight_is_answered_before_the_key_and_answers_carry_the_origin(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], router_api_keys={"web": "k"}, allowed_origins=["http://ui.example"])
    headers = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}
    async with http.options(router.url + "/api/chat", headers=headers) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://ui.example"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    async with http.get(router.url + "/api/tags", headers={"Origin": "http://ui.example",
                                                            "Authorization": "Bearer k"}) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == "http://ui.example"
    async with http.options(router.url + "/api/chat") as resp:  # not a preflight: the key is needed
        assert resp.status == 401
    async with http.options(router.url + "/api/chat", headers={"Authorization": "Bearer k"}) as resp:
        assert resp.status == 405  # ...and then there is no such method


async def test_garbage_requests_leave_no_traceback_in_the_log(fakes, tmp_path):
    a = await fakes("a")
    daemon = DaemonProcess(tmp_path / "config.yaml")
    await daemon.start(f"endpoints:\n  - {a.url}\n")
    try:
        for garbage in (b"\x16\x03\x01 not http\r\n\r\n", b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(garbage)
            await writer.drain()
            assert b" 400 Bad Request" in (await asyncio.wait_for(reader.read(), 5)).split(b"\r\n")[0]
            writer.close()
        await daemon.reload()  # something logged after the garbage, so the log is read up to here
    finally:
        daemon.signal()
        await daemon.wait()
    assert "Traceback" not in daemon.log and " ERROR " not in daemon.log, daemon.log


async def test_a_foreign_page_cannot_call_the_router_through_the_browser(fakes, start_router, http):
    """A web page the user visits sends requests with its Origin: deleting a model, pulling
    from an attacker's registry, a preflighted chat. Each gets 403 in the route's dialect, no
    CORS header, and nothing reaches a backend."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a])
    evil = {"Origin": "https://evil.example"}
    async with http.delete(router.url + "/api/delete", json={"model": "llama3"}, headers=evil) as resp:
        assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        assert (await resp.json())["error"].startswith("origin not allowed")
    async with http.post(router.url + "/api/pull", json={"model": "evil.example/x", "insecure": True},
                         headers=evil) as resp:
        assert resp.status == 403
    async with http.post(router.url + "/v1/chat/completions", json={**CHAT, "model": "llama3"},
                         headers=evil) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "origin_not_allowed"
    preflight = {**evil, "Access-Control-Request-Method": "POST"}
    async with http.options(router.url + "/api/chat", headers=preflight) as resp:
        assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
    assert [r.path for r in a.requests if r.path not in ("/api/tags", "/api/ps", "/api/version")] == []
    assert a.models == ["llama3:latest"]


@pytest.mark.parametrize("origin", [
    "http://localhost:5173", "https://127.0.0.1", "http://[::1]:3000", "http://0.0.0.0:8080", "app://obsidian.md",
    "vscode-webview://1a2b3c", "vscode-file://vscode-app", "tauri://localhost", "file://",
    "https://chat.example.org", "https://a.b.example.org",
])
async def test_local_pages_apps_and_configured_origins_are_allowed(fakes, start_router, http, origin):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], allowed_origins=["https://*.example.org"])
    async with http.post(router.url + "/api/chat", json=CHAT, headers={"Origin": origin}) as resp:
        assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == origin


async def test_the_routers_own_origin_is_allowed(fakes, start_router, http):
    """The dashboard behind a reverse proxy that keeps Host calls the API as its own origin."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], allowed_hosts=["router.example.com"])
    headers = {"Host": "router.example.com", "Origin": "https://router.example.com"}
    async with http.get(router.url + "/api/tags", headers=headers) as resp:
        assert resp.status == 200
    async with http.get(router.url + "/api/tags", headers={**headers, "Origin": "https://other.example.com"}) as resp:
        assert resp.status == 403


@pytest.mark.parametrize(("host", "status"), [
    ("attacker.example:12434", 403), ("attacker.example", 403), ("10.0.0.5:12434", 403), ("localhost.evil.com", 403),
    ("localhost:12434", 200), ("LOCALHOST", 200), ("127.0.0.1:12434", 200), ("[::1]:12434", 200),
    ("127.1.2.3", 200), ("0.0.0.0:12434", 200), ("app.localhost", 200), ("router.example.com", 200),
    ("a.internal.example.net:8443", 200),
])
async def test_a_rebinding_host_is_refused_while_listening_on_loopback(fakes, start_router, http, host, status):
    """DNS rebinding: a page on attacker.example points its name at 127.0.0.1 and calls the
    router as its own origin (same-origin: no Origin check helps). The Host still names the
    attacker's domain: 403, unless it is local or listed in allowed_hosts."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], allowed_hosts=["router.example.com", "*.internal.example.net"])
    async with http.post(router.url + "/api/chat", json=CHAT, headers={"Host": host}) as resp:
        assert resp.status == status
        if status == 403:
            assert (await resp.json())["error"].startswith("host not allowed")


async def test_any_host_is_served_when_listening_on_all_addresses(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], listen="0.0.0.0:12434")
    async with http.post(router.url + "/api/chat", json=CHAT, headers={"Host": "gpu-router.lan:12434"}) as resp:
        assert resp.status == 200
