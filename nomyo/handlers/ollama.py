"""Ollama's inference endpoints: /api/chat, /api/generate, /api/embed, /api/embeddings.

Thin by design: read the body once, check the few fields routing needs, and hand the client's
own bytes to the router. Types are checked here so that a malformed request gets Ollama's 400
instead of reaching (and occupying a slot on) a backend.
"""

from __future__ import annotations

from aiohttp import web

from ..dialects.fields import (
    BOOL,
    DURATION,
    INTEGER,
    LIST,
    OBJECT,
    OLLAMA_MESSAGE,
    STRING,
    TOOL,
    check_fields,
    check_items,
)
from ..dialects.ollama import check_semantics
from ..errors import bad_request
from ..keepalive import EarlyStream
from ..keys import ROUTER
from ..sinks import ClientSink
from ..unload import is_unload, unload
from .common import read_call

# JSON types per field, for the fields Ollama itself would reject when mistyped (the typed
# properties of the request schemas in nomyo.openapi).
COMMON = {"stream": BOOL, "options": OBJECT, "format": (str, dict), "keep_alive": DURATION, "think": (bool, str),
          "truncate": BOOL, "shift": BOOL, "logprobs": BOOL, "top_logprobs": INTEGER}
FIELD_TYPES = {
    "/api/chat": {"messages": LIST, "tools": LIST, **COMMON},
    "/api/generate": {"prompt": STRING, "suffix": STRING, "system": STRING, "template": STRING,
                      "images": LIST, "context": LIST, "raw": BOOL, **COMMON},
    "/api/embed": {"input": (str, list), "truncate": BOOL, "dimensions": INTEGER, "options": OBJECT,
                   "keep_alive": DURATION},
    "/api/embeddings": {"prompt": STRING, "options": OBJECT, "keep_alive": DURATION},
}
ITEM_TYPES = {"/api/chat": {"messages": OLLAMA_MESSAGE, "tools": TOOL},
              "/api/generate": {"images": STRING, "context": INTEGER}}


def check_types(path: str, payload: dict) -> None:
    check_fields(payload, FIELD_TYPES.get(path, {}))
    check_items(payload, ITEM_TYPES.get(path, {}))
    check_semantics(path, payload)
    inputs = payload.get("input")
    if path == "/api/embed" and isinstance(inputs, list) and not all(isinstance(i, str) for i in inputs):
        raise bad_request("invalid input type", param="input")


async def inference(request: web.Request) -> web.StreamResponse:
    """Route one inference request to the backend where its model is best served."""

    call = await read_call(request)  # any backend with the model may serve it, translated if need be
    check_types(call.path, call.payload)
    if is_unload(call.path, call.payload):  # every backend that has it loaded, not one
        return await unload(request, request.app[ROUTER], call.outcome, call.path, call.raw, call.model, call.key)
    interval = call.runtime.config.keepalive_interval
    early = None
    if interval and call.stream and not call.changes_loaded:
        early = EarlyStream(request, interval, sse=False, model=call.model, chat=call.path == "/api/chat")
    sink = ClientSink(request, early)
    await request.app[ROUTER].exchange(call, sink)
    return sink.response


def add_routes(app: web.Application) -> None:
    for path in FIELD_TYPES:
        app.router.add_post(path, inference)
