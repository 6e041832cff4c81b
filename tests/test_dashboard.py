"""The dashboard in a real browser (headless Debian Chromium) against the running router.

Skipped only when Chromium is missing AND NOMYO_SKIP_BROWSER_TESTS=1 says that is expected;
otherwise a missing browser fails the test (CI installs it). The screenshot is saved as
tests/artifacts/dashboard.png for a person to look at.
"""

from __future__ import annotations

import asyncio
import os
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
