"""The dashboard in a real browser (headless Debian Chromium) against the running router.

Skipped only when Chromium is missing AND NOMYO_SKIP_BROWSER_TESTS=1 says that is expected;
otherwise a missing browser fails the test (CI installs it). The screenshots are saved in
tests/artifacts/ (dashboard.png, dashboard-after.png, dashboard-operator.png, dashboard-key.png)
for a person to look at.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import orjson
import pytest

from tests.browser import Browser, find_chromium
from tests.conftest import eventually

ARTIFACTS = Path(__file__).parent / "artifacts"
EVIL = "evil<b>bold</b>:latest"
CHROMIUM = find_chromium()

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("NOMYO_SKIP_BROWSER_TESTS") == "1",
    reason="chromium is not installed and NOMYO_SKIP_BROWSER_TESTS=1")


def text_of(selector: str) -> str:
    return f"(document.querySelector({selector!r}) || {{}}).textContent"


async def test_dashboard_shows_backends_models_and_live_usage(fakes, start_router, http):
    """1. Three backends: gpu-a (llama3 loaded, and a model whose name is HTML), gpu-b (version
    string with HTML), gpu-c down.  2. Four requests on gpu-b are counted.  3. Two streams for
    llama3 on gpu-a with one slot: one in flight, one queued, both held.  4. The page shows all
    of it, with the HTML names as text.  5. The streams finish: the page follows live (no reload):
    nothing in flight, the new tokens counted."""

    assert CHROMIUM is not None, "chromium is not installed (apt-get install chromium)"
    a = await fakes("gpu-a", models=["llama3:latest", EVIL], loaded=["llama3:latest"])
    b = await fakes("gpu-b", models=["qwen2:latest", "nomic-embed-text:latest"], version="0.12.3<i>x</i>")
    c = await fakes("gpu-c")
    await c.go_down()
    router = await start_router([a, b, c], slots=1)
    for _ in range(3):
        async with http.post(router.url + "/api/generate", json={
                "model": "qwen2", "prompt": "one two three", "stream": False, "options": {"num_predict": 20}}) as r:
            assert r.status == 200
    async with http.post(router.url + "/api/embed", json={"model": "nomic-embed-text", "input": ["a b c"]}) as r:
        assert r.status == 200
    a.gate = asyncio.Event()
    body = orjson.dumps({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]})
    streams = [asyncio.create_task(http.post(router.url + "/api/chat", data=body)) for _ in range(2)]
    await a.wait_until(lambda: a.active == 1)
    await eventually(lambda: router.ledger.queued == 1, what="the second stream queued")

    async with Browser(CHROMIUM) as page:
        await page.goto(router.url + "/")
        await page.wait_for("document.querySelector('[data-live=\"gpu-a/llama3:latest\"]')"
                            " && document.querySelectorAll('[data-model]').length === 4"
                            " && document.querySelectorAll('#tokens-body tr').length === 2")
        assert await page.evaluate(text_of("#t-backends")) == "2 / 3"
        assert await page.evaluate(text_of("#t-inflight")) == "1"
        assert await page.evaluate(text_of("#t-queued")) == "1"
        assert await page.evaluate(text_of("#t-in")) == "12"
        assert await page.evaluate(text_of("#t-out")) == "60"
        live = await page.evaluate(text_of('[data-live="gpu-a/llama3:latest"]'))
        assert "1 / 1" in live
        backends = await page.evaluate("[...document.querySelectorAll('#backends-body tr')].map(r => r.innerText)")
        assert [row.split()[0] for row in backends] == ["gpu-a", "gpu-b", "gpu-c"]
        assert "up" in backends[0] and "llama3:latest" in backends[0]
        assert "0.12.3<i>x</i>" in backends[1]
        assert "down" in backends[2] and "cannot connect" in backends[2]
        models = await page.evaluate("[...document.querySelectorAll('[data-model]')].map(r => r.dataset.model)")
        assert models == [EVIL, "llama3:latest", "nomic-embed-text:latest", "qwen2:latest"]
        assert await page.evaluate(text_of(f'[data-model="{EVIL}"] td')) == EVIL
        injected = "document.querySelectorAll('main b, main i, main script').length"
        assert await page.evaluate(injected) == 0
        assert await page.evaluate("document.querySelectorAll('#chart rect').length") >= 1
        await page.screenshot(ARTIFACTS / "dashboard.png")

        a.gate.set()
        for task in streams:
            resp = await task
            assert resp.status == 200
            await resp.read()
        await page.wait_for("document.getElementById('t-inflight').textContent === '0'"
                            " && document.getElementById('t-requests').textContent === '6'")
        assert (await page.evaluate(text_of("#live-body"))).startswith("idle")
        await page.screenshot(ARTIFACTS / "dashboard-after.png")
    await router.settled()


async def test_dashboard_asks_for_the_router_key_and_keeps_it_for_the_tab(fakes, start_router):
    """1. The router requires a key; the page is opened without one.  2. The page asks for the key
    (a key field, "key needed") instead of "reconnecting" forever.  3. A wrong key: "that key was
    refused", the field stays.  4. The right key: the page goes live and shows the fleet.  5. A
    reload of the tab connects at once: the key is kept in the tab's sessionStorage."""

    assert CHROMIUM is not None, "chromium is not installed (apt-get install chromium)"
    a = await fakes("gpu-a", loaded=["llama3:latest"])
    router = await start_router([a], router_api_keys={"ops": "s3cret"})
    form_shown = "(document.getElementById('key-form') || {hidden: true}).hidden === false"
    async with Browser(CHROMIUM) as page:
        await page.goto(router.url + "/")
        await page.wait_for(form_shown + f" && {text_of('#live')} === 'key needed'")
        await asyncio.sleep(1.5)  # EventSource would have retried by now: the page still asks
        assert await page.evaluate(text_of("#live")) == "key needed"
        await page.screenshot(ARTIFACTS / "dashboard-key.png")

        await page.evaluate("document.getElementById('key-input').value = 'wrong';"
                            "document.querySelector('#key-form button').click()")
        await page.wait_for(form_shown + " && document.getElementById('key-status').textContent"
                            " === 'that key was refused'")

        await page.evaluate("document.getElementById('key-input').value = 's3cret';"
                            "document.querySelector('#key-form button').click()")
        await page.wait_for("document.getElementById('live').textContent === 'live'"
                            " && document.getElementById('t-backends').textContent === '1 / 1'")
        assert await page.evaluate(form_shown) is False
        assert await page.evaluate("sessionStorage.getItem('nomyo-router-key')") == "s3cret"

        await page.evaluate("window.beforeReload = true")
        await page.call("Page.reload")
        await page.wait_for(f"!window.beforeReload && {text_of('#live')} === 'live'"
                            " && document.querySelectorAll('[data-model]').length === 1")
        assert await page.evaluate(form_shown) is False
    await router.settled()


async def test_dashboard_gives_the_operator_slots_queue_errors_and_timings(fakes, start_router, http):
    """1. gpu-a serves mistral (2 slots) and llama3 (1 slot), gpu-b llama3 (1 slot), gpu-c qwen2.
    2. Four llama3 streams and two qwen2 answers complete: the models' timings.  3. gpu-c fails
    three requests: its circuit opens.  4. Held on the backends: one mistral stream (1 of 2
    slots), two llama3 streams, three more llama3 requests queued.  5. The page opens with
    /api/config blocked: the slot bars are right from the live snapshot alone ("1 / 2"); the queue
    shows once, fleet-wide and for llama3, not on each backend row; gpu-c shows its open circuit
    and 3 errors; llama3 has time-to-first-token and duration percentiles, qwen2 (not streamed)
    a duration only; every time on the page reads HH:MM:SS."""

    assert CHROMIUM is not None, "chromium is not installed (apt-get install chromium)"
    a = await fakes("gpu-a", models=["llama3:latest", "mistral:latest"], loaded=["llama3:latest", "mistral:latest"])
    b = await fakes("gpu-b", models=["llama3:latest"], loaded=["llama3:latest"])
    c = await fakes("gpu-c", models=["qwen2:latest"], loaded=["qwen2:latest"])
    router = await start_router([
        {"name": "gpu-a", "url": a.url, "max_concurrent_connections": 2, "model_slots": {"llama3": 1}},
        {"name": "gpu-b", "url": b.url, "max_concurrent_connections": 1},
        {"name": "gpu-c", "url": c.url, "max_concurrent_connections": 1}], breaker_cooldown=120)
    chat = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(4):
        async with http.post(router.url + "/api/chat", json=chat) as resp:
            assert resp.status == 200 and (await resp.read()).count(b"\n") > 1
    generate = {"model": "qwen2", "prompt": "x", "stream": False}
    for status in (200, 200, 502, 502, 502):
        if status == 502:
            c.fail_next(502, "bad gateway")
        async with http.post(router.url + "/api/generate", json=generate) as resp:
            assert resp.status == status
    a.gate, b.gate = asyncio.Event(), asyncio.Event()
    bodies = [orjson.dumps(chat | {"model": model}) for model in ["mistral"] + ["llama3"] * 5]
    streams = [asyncio.create_task(http.post(router.url + "/api/chat", data=body)) for body in bodies]
    await a.wait_until(lambda: a.active == 2)
    await b.wait_until(lambda: b.active == 1)
    await eventually(lambda: router.ledger.queued == 3, what="three llama3 requests queued")

    try:
        async with Browser(CHROMIUM) as page:
            await page.call("Network.enable")
            await page.call("Network.setBlockedURLs", urls=["*/api/config*"])
            await page.goto(router.url + "/")
            await page.wait_for("document.querySelectorAll('[data-live]').length === 3"
                                " && document.querySelectorAll('[data-perf]').length === 3"
                                " && document.querySelectorAll('#chart text').length > 2")
            live = await page.evaluate("Object.fromEntries([...document.querySelectorAll('[data-live]')]"
                                       ".map(r => [r.dataset.live, r.innerText.replace(/\\s+/g, ' ').trim()]))")
            assert live == {"gpu-a/mistral:latest": "gpu-a mistral:latest 1 / 2",
                            "gpu-a/llama3:latest": "gpu-a llama3:latest 1 / 1",
                            "gpu-b/llama3:latest": "gpu-b llama3:latest 1 / 1"}
            headers = await page.evaluate("[...document.querySelectorAll('#live-card th')].map(th => th.textContent)")
            assert headers == ["Backend", "Model", "Slots in use"]
            assert await page.evaluate(text_of("#t-queued")) == "3"
            perf = await page.evaluate("Object.fromEntries([...document.querySelectorAll('[data-perf]')]"
                                       ".map(r => [r.dataset.perf, [...r.cells].map(c => c.textContent)]))")
            assert perf["llama3:latest"][:4] == ["llama3:latest", "2", "3", "4"]
            assert all(re.fullmatch(r"\d+ ms|\d+\.\d+ s", cell) for cell in perf["llama3:latest"][4:])
            assert perf["qwen2:latest"][:4] == ["qwen2:latest", "0", "0", "2"]
            assert perf["qwen2:latest"][4:6] == ["–", "–"] and re.fullmatch(r"\d+ ms", perf["qwen2:latest"][6])
            assert perf["mistral:latest"][:4] == ["mistral:latest", "1", "0", "0"]
            gpu_c = await page.evaluate("document.querySelector('[data-backend=\"gpu-c\"]').innerText")
            assert "\tup\topen\t3" in gpu_c and "last: answered 502" in gpu_c  # polls answer: up, but out of routing
            errors = await page.evaluate("Object.fromEntries([...document.querySelectorAll('[data-errors]')]"
                                         ".map(c => [c.dataset.errors, c.firstChild.textContent]))")
            assert errors == {"gpu-a": "0", "gpu-b": "0", "gpu-c": "3"}
            times = await page.evaluate("[document.getElementById('updated').textContent.replace('updated ', ''),"
                                        " ...[...document.querySelectorAll('#chart text, #chart title')]"
                                        ".map(t => t.textContent.split(': ')[0]).filter(t => t.includes(':'))]")
            assert len(times) > 2 and all(re.fullmatch(r"\d\d:\d\d:\d\d", t) for t in times), times
            await page.screenshot(ARTIFACTS / "dashboard-operator.png")
    finally:
        a.gate.set()
        b.gate.set()
    for task in streams:
        async with await task as resp:
            assert resp.status == 200
            await resp.read()
    await router.settled()
