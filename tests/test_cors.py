"""CORS: browsers may call the router from any page, as they may call Ollama."""

from __future__ import annotations

import asyncio

from tests.daemon_process import DaemonProcess


async def test_preflight_is_answered_before_the_key_and_answers_carry_the_origin(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], router_api_keys={"web": "k"})
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
