"""The dashboard: static files served by the router itself, nothing fetched from elsewhere.

Browsers asking for `/` (Accept: text/html) get the page; API clients keep getting Ollama's
`Ollama is running`. The page and its script and style live in `share/dashboard/` of a checkout;
an installed package finds them under `<prefix>/share/nomyo-router/dashboard` (pip puts them in
the venv's prefix, see setup.cfg's data_files). The page reads everything through the router's
own API and builds its DOM with textContent only, and a Content-Security-Policy forbids inline
or foreign scripts, so a model name from a backend can never become markup.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp import web

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def candidates() -> list[Path]:
    """Where the files may be: the checkout first (an editable install), then install prefixes."""

    here = Path(__file__).resolve().parent
    return [
        here.parent / "share" / "dashboard",
        Path(sys.prefix) / "share" / "nomyo-router" / "dashboard",
        Path("/usr/local/share/nomyo-router/dashboard"),
        Path("/usr/share/nomyo-router/dashboard"),
    ]


def find_dashboard() -> Path | None:
    for directory in candidates():
        if (directory / "index.html").is_file():
            return directory
    return None


def wants_html(request: web.Request) -> bool:
    """A browser navigating to the page (curl and the Ollama clients do not ask for HTML)."""

    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


async def index(request: web.Request) -> web.StreamResponse:
    directory = find_dashboard()
    if directory is None:
        return web.Response(status=404, text="the dashboard files are not installed", content_type="text/plain")
    return web.FileResponse(directory / "index.html", headers=SECURITY_HEADERS)


def add_routes(app: web.Application) -> None:
    """`/static/{name}`: the files of the dashboard directory, by name (nothing else is reachable
    there, and a missing one is Ollama's `404 page not found` like any unknown path)."""

    directory = find_dashboard()
    if directory is None:
        return
    files = {path.name: path for path in directory.iterdir() if path.is_file()}

    async def static_file(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers=SECURITY_HEADERS)

    app.router.add_get("/static/{name}", static_file)
