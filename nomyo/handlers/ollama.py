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
from ..dialects.ollama import check_semantics, is_load_or_unload
from ..errors import bad_request
from ..keepalive import EARLY, EarlyStream
from ..translate import ollama_sender
from ..unload import is_unload, unload
from .common import read_model_request

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
STREAMING = ("/api/chat", "/api/generate")


def check_types(path: str, payload: dict) -> None:
    check_fields(payload, FIELD_TYPES.get(path, {}))
    check_items(payload, ITEM_TYPES.get(path, {}))
    check_semantics(path, payload)
    inputs = payload.get("input")
    if path == "/api/embed" and isinstance(inputs, list) and not all(isinstance(i, str) for i in inputs):
        raise bad_request("invalid input type", param="input")


async def inference(request: web.Request) -> web.StreamResponse:
    """Route one inference request to the backend where its model is best served."""

    incoming = await read_model_request(request)
    path, payload = request.path, incoming.payload
    check_types(path, payload)
    if is_unload(path, payload):  # every backend that has it loaded, not one
        return await unload(request, incoming.router, incoming.access, path, incoming.raw, incoming.model,
                            incoming.key)
    loading = is_load_or_unload(path, payload)
    interval = incoming.router.config.keepalive_interval
    if interval and path in STREAMING and payload.get("stream") is not False and not loading:
        request[EARLY] = EarlyStream(request, interval, sse=False, model=incoming.model, chat=path == "/api/chat")
    # Any backend with the model may serve it: an OpenAI-compatible one gets it translated.
    send = ollama_sender(request, incoming.router, incoming.access, path, payload, incoming.raw,
                         incoming.key, incoming.model)
    return await incoming.router.forward(request, incoming.access, incoming.key, path, incoming.raw,
                                         native=False, send=send, display=incoming.model,
                                         changes_loaded=loading)


def add_routes(app: web.Application) -> None:
    for path in FIELD_TYPES:
        app.router.add_post(path, inference)
