"""OpenAI's API in front: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models,
/v1/rerank (and /rerank).

Every backend speaks `/v1` (Ollama serves it too), so a `/v1` request goes to whichever backend
the table picks for its model, relayed as sent (see `bridge`). Rerank only goes to
OpenAI-compatible backends: Ollama has no rerank API. Errors are OpenAI error objects: the error
middleware renders every RouterError raised on a `/v1` path that way.
"""

from __future__ import annotations

import time
from datetime import datetime

from aiohttp import web

from .. import responses
from ..access import access_of
from ..call import Reach
from ..dialects.openai import JSON, check_request, model_object
from ..errors import model_not_found
from ..keepalive import EarlyStream
from ..keys import ROUTER
from ..names import normalize_model
from ..sinks import ClientSink
from .common import read_call

ROUTED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def json_response(payload, status: int = 200) -> web.Response:
    return responses.json_response(payload, status, JSON)


async def routed(request: web.Request) -> web.StreamResponse:
    """Route one /v1 request to a backend that has its model, wherever it is loaded best."""

    rerank = request.path.endswith("/rerank")
    call = await read_call(request, Reach.OPENAI if rerank else Reach.ANY)
    check_request(request.path, call.payload)
    interval = call.runtime.config.keepalive_interval
    early = None
    if interval and call.stream and call.upstream_path in ("/chat/completions", "/completions"):
        early = EarlyStream(request, interval, sse=True)
    sink = ClientSink(request, early)
    await request.app[ROUTER].exchange(call, sink)
    return sink.response


def _created(entry: dict) -> int:
    try:
        return int(datetime.fromisoformat(str(entry.get("modified_at"))).timestamp())
    except ValueError:
        return int(time.time())


def from_ollama_tag(entry: dict) -> dict | None:
    """An Ollama /api/tags entry as Ollama's own /v1/models shows it (`owned_by`: the namespace,
    `library` for official models)."""

    name = entry.get("model") or entry.get("name")
    if not isinstance(name, str) or not name:
        return None
    owner = name.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in name else "library"
    return {"id": name, "object": "model", "created": _created(entry), "owned_by": owner}


def listing(request: web.Request) -> dict[str, dict]:
    """Every model of every healthy backend once, by normalised name (Ollama's entry first)."""

    now = int(time.time())
    seen: dict[str, dict] = {}
    for backend in sorted(request.app[ROUTER].fleet.healthy(), key=lambda b: not b.config.is_ollama):
        for entry in backend.status.tags:
            obj = from_ollama_tag(entry) if backend.config.is_ollama else model_object(entry, now)
            if obj is not None and isinstance(obj.get("id"), str):
                seen.setdefault(normalize_model(obj["id"]), obj)
    return seen


async def models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": list(listing(request).values())})


async def model(request: web.Request) -> web.Response:
    """One model, as the backend that lists it answers: Ollama echoes the path as `id`, other
    servers give their own spelling. Unknown: 404 `not_found_error`."""

    name = request.match_info["model"]
    access_of(request).model = name
    key = normalize_model(name)
    found = listing(request).get(key)
    if found is None:
        raise model_not_found(name)
    ollama = any(b.config.is_ollama and key in b.status.models for b in request.app[ROUTER].fleet.healthy())
    return json_response({**found, "id": name} if ollama else found)


def add_routes(app: web.Application) -> None:
    for path in ROUTED:
        app.router.add_post(path, routed)
    app.router.add_post("/v1/rerank", routed)
    app.router.add_post("/rerank", routed)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)
