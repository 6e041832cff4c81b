"""What every routed handler does first: read the request once into a `Call`.

A routed request is read once, under the runtime it arrived in: the body (bounded by that
runtime's `max_body_size`), the model it names (a 400 if none), and the normalised key the ledger
counts by. Handlers then differ only in what they check and how the answer is delivered.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..access import access_of
from ..call import Call, Dialect, Reach
from ..dialects.ollama import is_load_or_unload, parse_body, require_model
from ..errors import RouterError
from ..keys import ROUTER
from ..names import normalize_model

STREAMING_OLLAMA = ("/api/chat", "/api/generate")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 once it is larger than `limit` (a claimed length
    over it is refused before any of it is read)."""

    length = request.content_length
    if length is not None:
        if length > limit:
            raise RouterError(413, "request body too large")
        try:
            return await request.content.readexactly(length) if length else b""  # the usual case: one copy
        except asyncio.IncompleteReadError:
            raise RouterError(400, "the request body was cut short") from None
    chunks, size = [], 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise RouterError(413, "request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_current_body(request: web.Request) -> bytes:
    """The body of a request that takes no runtime of its own (management, monitoring)."""

    return await read_body(request, request.app[ROUTER].config.max_body_size)


async def read_call(request: web.Request, reach: Reach = Reach.ANY) -> Call:
    runtime = request.app[ROUTER].runtime
    outcome = access_of(request)
    raw = await read_body(request, runtime.config.max_body_size)
    payload = parse_body(raw)
    model = require_model(payload)
    outcome.model = model
    path = request.path
    dialect = Dialect.of_path(path)
    if dialect is Dialect.OPENAI:
        stream = payload.get("stream") is True
    else:
        stream = path in STREAMING_OLLAMA and payload.get("stream") is not False
    return Call(dialect=dialect, path=path, model=model, key=normalize_model(model), raw=raw, payload=payload,
                runtime=runtime, outcome=outcome, stream=stream, reach=reach,
                changes_loaded=is_load_or_unload(path, payload), headers=request.headers)
