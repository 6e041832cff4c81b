"""CORS as Ollama answers it (`OLLAMA_ORIGINS`): pages on this machine and local apps may call
the router from a browser, other web pages may not.

A page the user happens to visit must not be able to pull, delete or create models on every
backend through the user's browser. So an `Origin` is allowed only if it matches a pattern:
Ollama's defaults (`localhost`, `127.0.0.1`, `0.0.0.0` and `[::1]` on any port and scheme, and
the `app://`, `file://`, `tauri://`, `vscode-webview://`, `vscode-file://` apps) plus the
operator's `allowed_origins` (`*` matches any run of characters; `"*"` alone allows every
origin), or if it is the router's own origin (`http(s)://` + the `Host` header: the dashboard,
also behind a reverse proxy that keeps `Host`). A request from any other origin is refused with 403 by
the front door (guard.py) before anything runs, preflights included; answers carry
`Access-Control-Allow-Origin` only for allowed origins.

Preflights (`OPTIONS` with `Access-Control-Request-Method`) are answered by the auth middleware
before the router key is checked (browsers never send credentials on a preflight).
"""

from __future__ import annotations

import functools
import re

from aiohttp import web

from .keys import ROUTER

ALLOWED_HEADERS = ("Authorization, Content-Type, User-Agent, Accept, X-Requested-With, OpenAI-Beta, "
                   "x-stainless-arch, x-stainless-lang, x-stainless-os, x-stainless-package-version, "
                   "x-stainless-runtime, x-stainless-runtime-version, x-stainless-retry-count, "
                   "x-stainless-timeout, x-stainless-async")
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
LOCAL_ORIGINS = tuple(f"{scheme}://{host}{port}" for host in ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
                      for scheme in ("http", "https") for port in ("", ":*"))
DEFAULT_ORIGINS = (*LOCAL_ORIGINS, "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")


@functools.lru_cache(maxsize=16)
def patterns(globs: tuple[str, ...]) -> re.Pattern:
    """One case-insensitive regular expression for a list of `*` globs (memoised per list)."""

    alternatives = "|".join(re.escape(glob.rstrip("/")).replace(r"\*", ".*") for glob in globs)
    return re.compile(f"(?:{alternatives})", re.IGNORECASE)


def origin_allowed(request: web.Request, origin: str) -> bool:
    host = request.headers.get("Host", "").lower()
    if host and origin.lower() in (f"http://{host}", f"https://{host}"):
        return True  # the router's own pages (also behind a proxy that keeps Host)
    extra = request.app[ROUTER].config.allowed_origins
    return patterns(DEFAULT_ORIGINS + extra).fullmatch(origin) is not None


def is_preflight(request: web.Request) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def preflight(request: web.Request) -> web.Response:
    """The answer to a browser's preflight from an allowed origin (the front door refused the
    others already; no key needed: browsers never send one with a preflight)."""

    return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": request.headers.get("Origin", "*"),
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin",
        })


async def allow_origin(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: let an allowed calling page read the answer (streams included)."""

    origin = request.headers.get("Origin")
    if origin is not None:
        if origin_allowed(request, origin):
            response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
