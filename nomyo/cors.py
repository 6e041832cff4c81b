"""CORS, as Ollama (and the original router) answer it: browsers may call the router from any
page, so web front ends that talk to Ollama directly keep working when pointed at the router.

Preflights (`OPTIONS` with `Access-Control-Request-Method`) are answered by the auth middleware
before the router key is checked (browsers never send credentials on a preflight); every answer
to a request that carries an `Origin` gets `Access-Control-Allow-Origin`.
"""

from __future__ import annotations

from aiohttp import web

ALLOWED_HEADERS = ("Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, "
                   "x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, "
                   "x-stainless-runtime, x-stainless-runtime-version, x-stainless-retry-count, "
                   "x-stainless-timeout, x-stainless-async")
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"


def is_preflight(request: web.Request) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def preflight(request: web.Request) -> web.Response:
    """The answer to a browser's preflight (no key needed: browsers never send one with it)."""

    return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin",
        })


async def allow_origin(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: let the calling page read the answer (streams included)."""

    origin = request.headers.get("Origin")
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
