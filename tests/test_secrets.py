"""What the router writes down: no backend password anywhere, no forged or painted log lines."""

from __future__ import annotations

import base64
import io
import logging
import signal

import aiohttp
import orjson

PASSWORD = "pw-Zq7xK9-never-shown"


async def test_a_password_in_a_backend_url_is_sent_as_basic_auth_and_shown_nowhere(fakes, daemon, tmp_path):
    """An Ollama behind a proxy with basic auth, configured as http://alice:PASSWORD@host:port.
    Requests and polls carry it as Basic auth; the backend is named host:port; the password
    appears in no log line (debug level), no answer (/health, /api/config, /metrics,
    /api/ps_details, /api/tags, an error message) and nowhere in the usage database file."""

    a = await fakes("a", loaded=["llama3:latest"])
    b = await fakes("b", loaded=["llama3:latest"])
    host_a, host_b = a.url.removeprefix("http://"), b.url.removeprefix("http://")
    router = await daemon(f"log_level: debug\nflush_interval: 0.05\nendpoints:\n"
                          f"  - http://alice:{PASSWORD}@{host_a}\n  - http://bob:{PASSWORD}@{host_b}/\n")
    answers = []
    async with aiohttp.ClientSession() as http:
        async with http.post(router.url + "/api/chat", json={"model": "llama3", "stream": False,
                                                             "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
            answers.append(await r.text())
        await b.go_down()  # now one backend is down: its failure is shown too
        for _ in range(3):
            async with http.post(router.url + "/api/generate",
                                 json={"model": "llama3", "prompt": "x", "stream": False}) as r:
                answers.append(await r.text())
        await router.wait_for_log("is down")
        for path in ("/health", "/api/config", "/metrics", "/api/ps_details", "/api/tags", "/api/usage",
                     "/api/token_counts"):
            async with http.get(router.url + path) as r:
                answers.append(await r.text())
        async with http.post(router.url + "/api/copy", json={"source": "llama3", "destination": "x",
                                                             "endpoints": [f"http://{host_b}"]}) as r:
            answers.append(await r.text())
    router.signal(signal.SIGTERM)
    assert await router.wait() == 0
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert {r.headers.get("Authorization") for r in a.requests} == {expected}
    assert f'"{host_a}"' in answers[-3]  # /api/token_counts names the backend host:port
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("usage.db*"))
    assert host_a.encode() in stored
    for where, text in [("log", router.log), ("answers", "\n".join(answers)), ("database", stored.decode("latin-1"))]:
        assert PASSWORD not in text and "alice:" not in text and "bob:" not in text, where


async def test_control_characters_in_logged_values_are_escaped_and_values_are_cut(fakes, daemon):
    """A client puts a newline and a forged access line into a model name and (as %0A) into a
    path, and ANSI escapes into another: every line of the journal still starts where the router
    started one, nothing reaches the terminal raw, and a 100,000-character model name leaves an
    access line of bounded length that still ends with its outcome."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await daemon(f"endpoints:\n  - {a.url}\n")
    forged = "x\nPOST /api/delete model=llama3 status=200 outcome=ok caller=admin"
    async with aiohttp.ClientSession() as http:
        for model in (forged, "\x1b[2J\x1b[31mred\x1b[0m", "m" * 100_000):
            async with http.post(router.url + "/api/generate", data=orjson.dumps({"model": model, "prompt": "x"})) as r:
                assert r.status == 404
        async with http.post(router.url + "/api/chat%0ADELETE%20/api/delete%20status=200") as r:
            assert r.status == 404
        await router.reload()  # something logged after them: the log is read up to here
    access = [line for line in router.lines if "nomyo.access" in line]
    assert len(access) == 4, router.log
    assert not any(line.startswith(("POST", "DELETE")) for line in router.lines)
    assert "\x1b" not in router.log and "\\x1b[31mred" in router.log
    assert "model=x\\x0aPOST /api/delete" in router.log and "/api/chat\\x0aDELETE /api/delete" in router.log
    long_line = next(line for line in access if "mmmm" in line)
    assert len(long_line) < 1000 and "more)" in long_line and long_line.endswith("outcome=rejected")


def test_tracebacks_stay_intact_while_the_message_is_escaped():
    from nomyo.logs import SafeFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("nomyo.test-secrets")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed for %s after %.1fs (%d tries)", "a\nb\x1b", 1.25, 3)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "ERROR nomyo.test-secrets: failed for a\\x0ab\\x1b after 1.2s (3 tries)"
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "ValueError: boom"
