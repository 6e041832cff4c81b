"""Fleet-wide views in Ollama's shapes: /, /api/version, /api/tags, /api/ps, /api/show.

A client asking the router what models exist sees one Ollama with the union of the fleet: each
model once, whichever backends hold it.
"""

from __future__ import annotations

import re
import time

from aiohttp import web

from .. import dashboard
from ..call import Reach
from ..dialects.fields import BOOL, OBJECT, STRING, check_fields
from ..errors import RouterError, model_not_found
from ..fleet import Backend
from ..keys import ROUTER
from ..names import normalize_model
from ..openai_models import Described, lists_loaded, ollama_ps, ollama_show, ollama_tag
from ..poller import parse_expiry
from ..responses import json_response
from ..sinks import ClientSink
from .common import read_call


async def root(request: web.Request) -> web.Response:
    """Clients and health checks probe `GET /` for Ollama's liveness text; browsers get the dashboard."""

    if dashboard.wants_html(request):
        return await dashboard.index(request)
    return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")


# The Ollama API version whose wire formats the router's translation follows (reference v0.12+).
SPOKEN_OLLAMA_API = "0.12.3"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


async def version(request: web.Request) -> web.Response:
    """The lowest version among healthy Ollama backends: what every backend can do. A fleet of
    OpenAI-compatible servers only is served through the router's own translation, which speaks
    the API of SPOKEN_OLLAMA_API, so that is the version clients are told."""

    router = request.app[ROUTER]
    healthy = router.fleet.healthy()
    versions = [b.status.version for b in healthy if b.config.is_ollama and b.status.version]
    if versions:
        return json_response({"version": min(versions, key=_version_key)})
    if healthy:
        return json_response({"version": SPOKEN_OLLAMA_API})
    raise RouterError(503, "no backend is reachable", headers={"Retry-After": "5"})


def described(router, backend: Backend, entry: dict) -> Described:
    """A model of an OpenAI-compatible backend, with all the router knows about it."""

    return Described(backend, entry, router.poller.facts, router.config.model_capabilities)


async def tags(request: web.Request) -> web.Response:
    """Every model of every healthy backend, once (an Ollama backend's entry if any has it;
    models of OpenAI-compatible backends in Ollama's shape)."""

    router = request.app[ROUTER]
    seen: dict[str, dict] = {}
    for backend in sorted(router.fleet.healthy(), key=lambda b: not b.config.is_ollama):
        for entry in backend.status.tags:
            entry = entry if backend.config.is_ollama else ollama_tag(described(router, backend, entry))
            name = normalize_model(str(entry.get("model") or entry.get("name") or ""))
            seen.setdefault(name, entry)
    return json_response({"models": list(seen.values())})


def loaded_entries(router, backend: Backend, now: float) -> list[tuple[float, dict]]:
    """(expiry, /api/ps entry) of what `backend` has loaded now."""

    if backend.config.is_ollama:
        found = ((parse_expiry(e.get("expires_at")), e) for e in backend.status.ps)
        return [(expiry, entry) for expiry, entry in found if expiry > now]
    if not lists_loaded(backend):
        return []
    return [(backend.status.loaded[normalize_model(e["id"])], ollama_ps(described(router, backend, e)))
            for e in backend.status.tags if backend.status.is_loaded(normalize_model(e["id"]), now)]


async def ps(request: web.Request) -> web.Response:
    """Loaded models, asked of the backends now (so an unload a moment ago shows), merged by
    name with the latest expiry, newest expiry first as Ollama sorts them."""

    router = request.app[ROUTER]
    await router.poller.refresh_all([b for b in router.fleet.backends.values() if b.config.is_ollama])
    now = time.time()
    merged: dict[str, tuple[float, dict]] = {}
    for backend in sorted(router.fleet.healthy(), key=lambda b: not b.config.is_ollama):
        for expiry, entry in loaded_entries(router, backend, now):
            name = normalize_model(str(entry.get("model") or entry.get("name") or ""))
            if name not in merged or expiry > merged[name][0]:
                merged[name] = (expiry, entry)
    ordered = sorted(merged.values(), key=lambda item: item[0], reverse=True)
    return json_response({"models": [entry for _, entry in ordered]})


SHOW_FIELDS = {"verbose": BOOL, "system": STRING, "template": STRING, "options": OBJECT}


async def show(request: web.Request) -> web.StreamResponse:
    """Asked of a healthy backend that has the model, where it is loaded if possible."""

    router = request.app[ROUTER]
    call = await read_call(request, Reach.OLLAMA)
    check_fields(call.payload, SHOW_FIELDS)
    key, model = call.key, call.model
    now = time.time()
    holders = [b for b in router.fleet.with_model(key) if b.status.healthy and b.config.is_ollama]
    if not holders:
        await router.poller.refresh_all(max_age=0.5)
        holders = [b for b in router.fleet.with_model(key) if b.status.healthy and b.config.is_ollama]
    if not holders:
        return _show_openai_model(router, key, model)
    holders.sort(key=lambda b: not b.status.is_loaded(key, now))
    sink = ClientSink(request)
    await router.pipeline.unleased(call, holders, sink)
    return sink.response


def _show_openai_model(router, key: str, model: str) -> web.Response:
    """A model only OpenAI-compatible backends serve: they have no /api/show, so the router
    describes it from what they tell (see openai_models)."""

    for backend in router.fleet.with_model(key):
        if backend.status.healthy:
            for entry in backend.status.tags:
                if normalize_model(entry["id"]) == key:
                    return json_response(ollama_show(described(router, backend, entry)))
    raise model_not_found(model)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
