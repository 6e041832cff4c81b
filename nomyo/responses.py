"""The JSON answer every handler gives: orjson-encoded, with the dialect's exact Content-Type."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .dialects.ollama import JSON_UTF8


def json_response(payload: Any, status: int = 200, content_type: str = JSON_UTF8) -> web.Response:
    """Ollama answers `application/json; charset=utf-8`; pass `application/json` for /v1.
    numpy arrays are written as such (float32 ones with float32's shortest digits)."""

    response = web.Response(status=status, body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY))
    response.headers["Content-Type"] = content_type
    return response
