"""Model management across the fleet: pull, push, create, copy, delete, blobs; /api/ps_details.

An operator manages the fleet's models through the router as they would one Ollama. Each call
goes to its target backends in parallel: every healthy Ollama backend, or those named by an
`endpoints` list in the body or `?endpoint=` in the query (by name or URL). OpenAI-compatible
backends do not speak Ollama's management API and are skipped. The answer is Ollama's, plus a
`backends` object saying how each backend ended (clients ignore it). The affected backends are
polled before the answer ends, so a pulled or copied model is routable when the client hears
`success`, and a deleted one is no longer routed to.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson
from aiohttp import web

from ..access import access_of
from ..dialects.fields import BOOL, LIST, OBJECT, OLLAMA_MESSAGE, STRING, check_fields, check_items
from ..dialects.ollama import parse_body, require_model
from ..errors import RouterError, bad_request
from ..fanout import Outcome, ProgressStream, Report, Upstream, run_calls, run_progress
from ..fleet import Backend
from ..keys import ROUTER
from ..names import normalize_model
from ..poller import parse_expiry
from ..responses import json_response
from ..router import Router
from ..tee import broadcast
from .common import read_current_body

DIGEST = re.compile(r"^sha256[:-][0-9a-f]{64}$")
# JSON types of the fields Ollama would reject when mistyped (`endpoints` is checked with the targets)
FIELD_TYPES = {
    "/api/pull": {"insecure": BOOL, "stream": BOOL},
    "/api/push": {"insecure": BOOL, "stream": BOOL},
    "/api/create": {"from": STRING, "files": OBJECT, "adapters": OBJECT, "template": STRING, "license": (str, list),
                    "system": STRING, "parameters": OBJECT, "messages": LIST, "quantize": STRING, "stream": BOOL},
}
ITEM_TYPES = {"/api/create": {"messages": OLLAMA_MESSAGE}}


@dataclass(slots=True)
class Targets:
    """The backends an operation goes to, and why the others do not get it."""

    backends: list[Backend]
    skipped: dict[str, str] = field(default_factory=dict)
    named: bool = False  # the client chose them with `endpoints`

    def skip(self, backend: Backend, reason: str) -> None:
        self.backends.remove(backend)
        self.skipped[backend.name] = reason

    def report(self, operation: str, not_found: str) -> Report:
        return Report(operation, not_found, {name: Outcome.skipped(why) for name, why in self.skipped.items()})


def _requested(request: web.Request, payload: dict | None) -> list[str] | None:
    """Endpoint names or URLs from `?endpoint=` (repeated or comma-separated) and `endpoints`."""

    names = [part.strip() for value in request.query.getall("endpoint", []) for part in value.split(",")]
    listed = payload.get("endpoints") if payload else None
    if isinstance(listed, str):
        listed = [listed]
    if listed is not None and not (isinstance(listed, list) and all(isinstance(n, str) for n in listed)):
        raise bad_request("invalid type for 'endpoints': expected an array of strings", param="endpoints")
    names = [n for n in names + (listed or []) if n.strip()]
    return names or None


def _find(router: Router, name: str) -> Backend:
    for backend in router.fleet.backends.values():
        if name.strip() in (backend.name, backend.config.url) or name.strip().rstrip("/") == backend.config.url:
            return backend
    raise bad_request(f"unknown endpoint '{name}'", param="endpoints")


def choose_targets(router: Router, request: web.Request, payload: dict | None = None) -> Targets:
    """All healthy Ollama backends, or the named ones (tried even if they look down: the
    operator asked for them). A 400 names an unknown endpoint; a 503 says none is left."""

    names = _requested(request, payload)
    chosen = list(router.fleet.backends.values()) if names is None else [_find(router, n) for n in names]
    targets = Targets([], named=names is not None)
    for backend in dict.fromkeys(chosen):
        if not backend.config.is_ollama:
            targets.skipped[backend.name] = "not an Ollama backend"
        elif names is None and not backend.status.healthy:
            targets.skipped[backend.name] = f"unreachable: {backend.status.error}"
        else:
            targets.backends.append(backend)
    if not targets.backends and names is not None:
        raise bad_request("none of the named endpoints is an Ollama backend", param="endpoints")
    if not targets.backends:
        raise RouterError(503, "no Ollama backend is reachable", headers={"Retry-After": "5"})
    return targets


async def keep_holders(router: Router, targets: Targets, model: str) -> None:
    """Narrow `targets` to the backends that have `model`, asking them first (it may have been
    pulled or deleted on a backend directly since the last poll)."""

    await router.poller.refresh_all(targets.backends, max_age=0.5)
    key = normalize_model(model)
    for backend in list(targets.backends):
        if key not in backend.status.models:
            targets.skip(backend, "does not have the model")


@contextlib.asynccontextmanager
async def refreshing(router: Router, backends: list[Backend]) -> AsyncIterator[None]:
    """Poll `backends` as soon as the operation ends, before the client hears how it ended;
    if the client went away first, poll them in the background."""

    try:
        yield
    except BaseException:
        for backend in backends:
            router.poller.refresh_soon(backend)
        raise
    await router.poller.refresh_all(backends)


def upstream(router: Router) -> Upstream:
    return Upstream(router.session, router.config.connect_timeout)


def forwarded(payload: dict, **changes) -> bytes:
    """The client's request for a backend: without the router's `endpoints`, with `changes`."""

    return orjson.dumps({k: v for k, v in payload.items() if k != "endpoints"} | changes)


async def read_model(request: web.Request) -> tuple[Router, dict, str]:
    payload = parse_body(await read_current_body(request))
    model = require_model(payload)
    check_fields(payload, FIELD_TYPES.get(request.path, {}))
    check_items(payload, ITEM_TYPES.get(request.path, {}))
    access_of(request).model = model
    return request.app[ROUTER], payload, model


def conclude(request: web.Request, targets: Targets, report: Report) -> None:
    """Put the report's backends in the configuration's order; fill in the access record."""

    order = list(request.app[ROUTER].fleet.backends)
    report.outcomes = dict(sorted(report.outcomes.items(),
                                  key=lambda item: order.index(item[0]) if item[0] in order else len(order)))
    access = access_of(request)
    # one name or none: a list of names would become a new metrics label per combination
    access.backend = targets.backends[0].name if len(targets.backends) == 1 else None
    states = {o.state for o in report.outcomes.values()}
    access.kind = "ok" if report.ok else ("partly-failed" if "success" in states else "backend-error")


# -- streamed operations: pull, push, create ---------------------------------------------------

async def progress_operation(request: web.Request, verb: str, payload: dict, model: str,
                             targets: Targets) -> web.StreamResponse:
    """Run a streamed operation on every target and answer with the merged progress."""

    router = request.app[ROUTER]
    report = targets.report(f"{verb} '{model}'", f"model '{model}' not found")
    notices = [{"status": f"skipping {name}: {why}"} for name, why in targets.skipped.items()]
    stream = ProgressStream(request, payload.get("stream") is not False, notices)
    body = forwarded(payload, stream=True)  # progress is merged here whatever the client wants
    try:
        async with refreshing(router, targets.backends):
            report.outcomes.update(await run_progress(upstream(router), targets.backends, request.path, body, stream))
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        access_of(request).kind = "client-disconnected"
        return stream.response or web.Response(status=499)
    conclude(request, targets, report)
    return await stream.finish(report)


async def pull(request: web.Request) -> web.StreamResponse:
    router, payload, model = await read_model(request)
    return await progress_operation(request, "pull", payload, model, choose_targets(router, request, payload))


async def create(request: web.Request) -> web.StreamResponse:
    router, payload, model = await read_model(request)
    return await progress_operation(request, "create", payload, model, choose_targets(router, request, payload))


async def push(request: web.Request) -> web.StreamResponse:
    """Pushed from one backend that has the model (a registry needs one copy, and N pushes of
    the same tag would race), or from each of the backends the client named."""

    router, payload, model = await read_model(request)
    targets = choose_targets(router, request, payload)
    await keep_holders(router, targets, model)
    if not targets.backends:
        return targets.report(f"push '{model}'", f"model '{model}' not found").response()
    if not targets.named:
        for other in targets.backends[1:]:
            targets.skip(other, f"pushed from {targets.backends[0].name}")
    return await progress_operation(request, "push", payload, model, targets)


# -- answered operations: copy, delete ---------------------------------------------------------

async def answered_operation(request: web.Request, method: str, payload: dict, model: str,
                             report_of, targets: Targets) -> web.Response:
    """Run a request with a plain answer on every target that has `model`."""

    router = request.app[ROUTER]
    await keep_holders(router, targets, model)
    report: Report = report_of(targets)
    body, up = forwarded(payload), upstream(router)
    async with refreshing(router, targets.backends):
        calls = {b.name: up.call(b, method, request.path, body, absent_on_404=True) for b in targets.backends}
        report.outcomes.update(await run_calls(calls))
    conclude(request, targets, report)
    return report.response()


async def copy(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    payload = parse_body(await read_current_body(request))
    names = {}
    for field_name in ("source", "destination"):
        value = payload.get(field_name)
        if not isinstance(value, str) or not value.strip():
            raise bad_request(f'{field_name} "{value if isinstance(value, str) else ""}" is invalid', param=field_name)
        names[field_name] = value
    source, destination = names["source"], names["destination"]
    access_of(request).model = source
    targets = choose_targets(router, request, payload)
    return await answered_operation(
        request, "POST", payload, source,
        lambda t: t.report(f"copy '{source}' to '{destination}'", f'model "{source}" not found'), targets)


async def delete(request: web.Request) -> web.Response:
    router, payload, model = await read_model(request)
    targets = choose_targets(router, request, payload)
    return await answered_operation(
        request, "DELETE", payload, model,
        lambda t: t.report(f"delete '{model}'", f"model '{model}' not found"), targets)


# -- blobs: what `ollama create` from a local file uploads first -------------------------------

def blob_digest(request: web.Request) -> str:
    digest = request.match_info["digest"]
    if not DIGEST.match(digest):
        raise bad_request("invalid digest format")
    return digest


async def blob_presence(router: Router, targets: Targets, digest: str) -> dict[str, Outcome]:
    up = upstream(router)
    path = f"/api/blobs/{digest}"
    return await run_calls({b.name: up.call(b, "HEAD", path, absent_on_404=True) for b in targets.backends})


async def blob_head(request: web.Request) -> web.Response:
    """200 only if every target has the blob, so the client uploads it when any one lacks it."""

    router = request.app[ROUTER]
    targets = choose_targets(router, request)
    present = await blob_presence(router, targets, blob_digest(request))
    return web.Response(status=200 if all(o.state == "success" for o in present.values()) else 404)


async def blob_upload(request: web.Request) -> web.Response:
    """The client's bytes go to every target that lacks the blob, all at once, as they arrive
    (never held whole: blobs are model weights). Not bound by `max_body_size`. 201 when stored
    somewhere, 200 when every target had it already."""

    router = request.app[ROUTER]
    digest = blob_digest(request)
    targets = choose_targets(router, request)
    present = await blob_presence(router, targets, digest)
    report = targets.report(f"upload of {digest}", f"blob {digest} not found")
    report.outcomes.update({name: o for name, o in present.items() if o.state == "success"})
    missing = [b for b in targets.backends if present[b.name].state != "success"]
    if missing:
        up, path, length = upstream(router), f"/api/blobs/{digest}", request.content_length

        def uploader(backend: Backend):
            headers = up.headers(backend, request.content_type or "application/octet-stream")
            if length is not None:
                headers["Content-Length"] = str(length)
            return lambda chunks: up.call(backend, "POST", path, chunks, headers=headers, read_timeout=None)

        report.outcomes.update(await broadcast(request.content, {b.name: uploader(b) for b in missing}))
    conclude(request, targets, report)
    return report.response()


# -- where models are loaded, instance by instance ---------------------------------------------

def ps_row(backend: Backend, entry: dict) -> dict:
    return {**entry, "backend": backend.name, "endpoint": backend.config.url,
            "size": entry.get("size"), "size_vram": entry.get("size_vram"),
            "context_length": entry.get("context_length"), "expires_at": entry.get("expires_at")}


async def ps_details(request: web.Request) -> web.Response:
    """One row per loaded model per backend (where `/api/ps` merges them by name). Models of
    OpenAI-compatible backends are always loaded; their sizes and expiry are unknown (null)."""

    router = request.app[ROUTER]
    await router.poller.refresh_all(max_age=0.5)
    now, rows = time.time(), []
    for backend in router.fleet.healthy():
        if backend.config.is_ollama:
            rows += [ps_row(backend, e) for e in backend.status.ps if parse_expiry(e.get("expires_at")) > now]
            continue
        for entry in backend.status.tags:
            name = entry.get("id")
            rows.append(ps_row(backend, {"name": name, "model": name}))
    return json_response({"models": rows})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/pull", pull)
    app.router.add_post("/api/push", push)
    app.router.add_post("/api/create", create)
    app.router.add_post("/api/copy", copy)
    app.router.add_delete("/api/delete", delete)
    app.router.add_head("/api/blobs/{digest}", blob_head)
    app.router.add_post("/api/blobs/{digest}", blob_upload)
    app.router.add_get("/api/ps_details", ps_details)
