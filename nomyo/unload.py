"""`keep_alive: 0` with nothing to generate: unload a model from every backend that holds it.

`ollama stop m`, and `generate(model=m, keep_alive=0)` with an empty prompt, ask one Ollama to
free the model's memory. Behind the router the model may be loaded on several backends, so the
unload goes to each backend that has it loaded, all at once (a slow one holds up no other),
takes no slot (Ollama answers it without its runner), and is answered once, in Ollama's shape
(`done_reason: "unload"`). The backends are polled again before the answer, so `/api/ps`
through the router no longer lists the model when the client hears it is gone. llama-server in
router mode unloads through its `/models/unload`; other OpenAI-compatible servers cannot unload.

A load (an empty prompt without `keep_alive: 0`) is not handled here: it goes to one backend
through normal routing, like any request.
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from .call import Outcome
from .dialects.from_openai import created_at
from .dialects.ollama import is_load_or_unload, keeps_alive_zero
from .errors import model_not_found
from .fanout import Report, Upstream, run_calls
from .fleet import Backend
from .openai_models import unload_call
from .responses import json_response

UNLOADING = ("/api/chat", "/api/generate")


def is_unload(path: str, payload: dict) -> bool:
    """An empty prompt (or no messages) with `keep_alive: 0`."""

    return path in UNLOADING and is_load_or_unload(path, payload) and keeps_alive_zero(payload.get("keep_alive"))


def holders(router, key: str) -> list[Backend]:
    """Healthy backends where the model is loaded now, as last seen, that can unload it."""

    now = time.time()
    return [b for b in router.fleet.with_model(key) if b.status.healthy and b.status.is_loaded(key, now)
            and (b.config.is_ollama or unload_call(b, key) is not None)]


async def unload(request: web.Request, router, access: Outcome, path: str, raw: bytes, spelled: str,
                 key: str) -> web.Response:
    """Unload `key` wherever it is loaded and answer as Ollama does (or say which backend failed)."""

    targets = holders(router, key)
    if not targets:  # the last poll may be stale: a request may have loaded it a moment ago
        await router.poller.refresh_all(router.fleet.with_model(key), max_age=0.5)
        targets = holders(router, key)
    if not targets and not any(b.status.healthy for b in router.fleet.with_model(key)):
        raise model_not_found(spelled)
    report = await unload_from(router, targets, path, raw, key)
    access.backend = targets[0].name if len(targets) == 1 else None
    access.status = report.status if targets else 200
    if targets and not report.ok:
        access.kind = "partly-failed" if any(o.state == "success" for o in report.outcomes.values()) \
            else "backend-error"
        return report.response()
    access.kind = "ok"
    return json_response(unloaded(spelled, chat=path == "/api/chat"))


async def unload_from(router, targets: list[Backend], path: str, raw: bytes, key: str) -> Report:
    """Every target asked at once; polled again before this returns, however they answered."""

    up = Upstream(router.session, router.config.connect_timeout)
    calls = {}
    for backend in targets:
        if backend.config.is_ollama:
            calls[backend.name] = up.call(backend, "POST", path, raw)
        elif (call := unload_call(backend, key)) is not None:
            where, body = call
            calls[backend.name] = up.call(backend, "POST", where, orjson.dumps(body))
    report = Report(f"unload '{key}'", f"model '{key}' not found")
    try:
        report.outcomes.update(await run_calls(calls))
    finally:
        await router.poller.refresh_all(targets)
    return report


def unloaded(model: str, *, chat: bool) -> dict:
    """Ollama's answer to an unload: done, nothing generated, `done_reason: "unload"`."""

    answer: dict = {"model": model, "created_at": created_at()}
    answer |= {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
    return answer | {"done": True, "done_reason": "unload"}
