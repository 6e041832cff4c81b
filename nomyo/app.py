"""Build the aiohttp application: middlewares, routes, and the router's lifecycle.

No singletons: everything a handler needs hangs off `app[ROUTER]`, so tests can run several
routers in one process and a reload swaps state without touching module globals.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from . import dashboard, openapi
from .access import access_log_middleware, access_of
from .auth import auth_middleware
from .config import Config
from .cors import allow_origin
from .errors import RouterError, error_response, is_openai_path, render
from .guard import body_middleware, front_door_middleware
from .handlers import fleet, models, monitor, ollama, openai
from .keys import ROUTER
from .router import Router

log = logging.getLogger("nomyo.app")


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Every failure becomes a clear answer in the caller's dialect; never a traceback."""

    try:
        return await handler(request)
    except RouterError as exc:
        access_of(request).refused(exc)
        return render(request.path, exc)
    except web.HTTPException as exc:
        return _http_exception(request, exc)
    except RequestPayloadError as exc:  # e.g. a gzip body that is not gzip: the client's fault
        access_of(request).kind = "rejected"
        reason = str(exc).strip().splitlines()[-1].strip()
        return error_response(request.path, 400, f"the request body cannot be read: {reason}")
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        access_of(request).kind = "internal-error"
        return error_response(request.path, 500, "internal error in the router; see its log")


def _http_exception(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    """aiohttp's own 404/405/413 in the caller's dialect (Ollama answers with gin's plain text)."""

    if exc.status == 413:
        return error_response(request.path, 413, "request body too large")
    if is_openai_path(request.path) and exc.status >= 400:
        return error_response(request.path, exc.status, exc.reason or "error")
    if exc.status == 404:
        return web.Response(status=404, text="404 page not found", content_type="text/plain")
    if exc.status == 405:
        return web.Response(status=405, text="405 method not allowed", content_type="text/plain")
    if exc.status >= 400:  # e.g. 403 for the dashboard's directory itself
        return error_response(request.path, exc.status, (exc.reason or "error").lower())
    return exc


def build_app(config: Config, router: Router | None = None) -> web.Application:
    """The application for `config`. The router starts and stops with the app."""

    app = web.Application(
        middlewares=[access_log_middleware, front_door_middleware, auth_middleware, error_middleware,
                     body_middleware],
        client_max_size=config.max_body_size,
    )
    app.on_response_prepare.append(allow_origin)
    app[ROUTER] = router or Router(config)
    fleet.add_routes(app)
    ollama.add_routes(app)
    openai.add_routes(app)
    models.add_routes(app)
    monitor.add_routes(app)
    dashboard.add_routes(app)
    openapi.add_routes(app)
    app.cleanup_ctx.append(_router_lifecycle)
    return app


async def _router_lifecycle(app: web.Application):
    router = app[ROUTER]
    await router.start()
    yield
    await router.stop()
