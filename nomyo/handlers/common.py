"""What every routed handler does first.

A routed request is read once: the body, the model it names (a 400 if none), and the
normalised key the table counts by. Handlers then differ only in what they check and where
they send it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..access import AccessRecord, access_of
from ..dialects.ollama import parse_body, require_model
from ..keys import ROUTER
from ..names import normalize_model
from ..router import Router


@dataclass(slots=True)
class ModelRequest:
    """One request that names a model: its raw bytes, the parsed body and the model."""

    router: Router
    access: AccessRecord
    raw: bytes
    payload: dict[str, Any]
    model: str  # as the client spelled it
    key: str  # normalised: what routing and counting use


async def read_model_request(request: web.Request) -> ModelRequest:
    router = request.app[ROUTER]
    access = access_of(request)
    raw = await request.read()
    payload = parse_body(raw)
    model = require_model(payload)
    access.model = model
    return ModelRequest(router, access, raw, payload, model, normalize_model(model))
