"""Start, serve, reload and stop the daemon.

SIGTERM/SIGINT stop accepting connections and let in-flight requests finish (up to
`drain_timeout`); SIGHUP re-reads the configuration, and a bad file leaves the running one in
place with its error logged.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import build_app
from .config import Config, ConfigError, load_config
from .keys import ROUTER
from .logs import set_level

log = logging.getLogger("nomyo.daemon")
DRAIN_TIMEOUT = 60.0


class Daemon:
    """One running router process: the app runner, its listening site and its signals."""

    def __init__(self, config: Config, config_path: str | None):
        self.config = config
        self.config_path = config_path
        self.app = build_app(config)
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None,
                                    shutdown_timeout=DRAIN_TIMEOUT)
        self._stopping = asyncio.Event()
        self._reloading: asyncio.Task | None = None

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.listen_host, self.config.listen_port,
                           backlog=1024, reuse_address=True)
        await site.start()
        for warning in self.config.warnings:
            log.warning("%s", warning)
        log.info("listening on http://%s with %d backends", self.config.listen, len(self.config.endpoints))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        await self.start()
        loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
        loop.add_signal_handler(signal.SIGINT, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)
        await self._stopping.wait()
        log.info("stopping: no new connections; letting in-flight requests finish")
        await self.runner.cleanup()
        log.info("stopped")
        return 0

    def _schedule_reload(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self.reload())

    async def reload(self) -> bool:
        """Re-read the configuration file and swap it in; keep the old one on any error."""

        if not self.config_path:
            log.warning("reload requested, but the router runs without a configuration file")
            return False
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return False
        if (config.listen_host, config.listen_port) != (self.config.listen_host, self.config.listen_port):
            log.warning("listen address changed to %s: that takes a restart; still on %s",
                        config.listen, self.config.listen)
        await self.app[ROUTER].reload(config)
        set_level(config.log_level)
        for warning in config.warnings:
            log.warning("%s", warning)
        self.config = config
        log.info("configuration reloaded from %s: %d backends", self.config_path, len(config.endpoints))
        return True
