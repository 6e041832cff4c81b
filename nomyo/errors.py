"""Errors that carry their HTTP status and speak the caller's dialect.

Handlers raise `RouterError`; the error middleware renders it as Ollama's `{"error": "..."}` on
native routes and as an OpenAI error object on `/v1` routes. Messages are written for the person
reading them in their client, never a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error"}


class RouterError(Exception):
    """A request that cannot be served, with the status and message the client should get."""

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.code = code
        self.param = param


def bad_request(message: str, param: str | None = None) -> RouterError:
    return RouterError(400, message, param=param)


def model_not_found(model: str) -> RouterError:
    return RouterError(404, f"model '{model}' not found", code="model_not_found")


def server_busy(retry_after: int) -> RouterError:
    return RouterError(503, SERVER_BUSY, headers={"Retry-After": str(retry_after)}, code="server_busy")


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1" or path == "/rerank"


def ollama_error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def openai_error_body(status: int, message: str, code: str | None = None,
                      param: str | None = None) -> bytes:
    kind = OPENAI_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def error_response(path: str, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                   code: str | None = None, param: str | None = None) -> web.Response:
    """An error in the dialect of the route at `path`."""

    if is_openai_path(path):
        body = openai_error_body(status, message, code, param)
        content_type = "application/json"
    else:
        body = ollama_error_body(message)
        content_type = "application/json; charset=utf-8"
    response = web.Response(status=status, body=body, headers=headers)
    response.headers["Content-Type"] = content_type
    return response


def render(path: str, error: RouterError) -> web.Response:
    return error_response(path, error.status, error.message, headers=error.headers,
                          code=error.code, param=error.param)
