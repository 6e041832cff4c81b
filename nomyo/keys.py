"""Typed keys of the aiohttp application (no module-level state: everything hangs off the app)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .router import Router

ROUTER: web.AppKey[Router] = web.AppKey("router")

if TYPE_CHECKING:
    from .cache.cache import ResponseCache

CACHE: web.AppKey[ResponseCache] = web.AppKey("cache")
