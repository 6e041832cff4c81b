"""Start, serve, reload and stop the daemon.

SIGTERM/SIGINT: stop accepting connections, let in-flight requests finish (up to
`drain_timeout`), then close the rest and flush; a second signal stops waiting at once.
SIGHUP: re-read the configuration; a bad file leaves the running one in place, its error logged.
systemd hears about each step through sd_notify.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from .app import build_app
from .config import Config, ConfigError, load_config
from .gctune import tune_gc
from .keys import ROUTER
from .logs import set_level
from .systemd import Notifier, cancel_quietly, watchdog, watchdog_interval

log = logging.getLogger("nomyo.daemon")


class Daemon:
    """One running router process: the app runner, its listening site and its signals."""

    def __init__(self, config: Config, config_path: str | None, notifier: Notifier | None = None):
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.app = build_app(config)
        # Draining is ours (see shutdown); aiohttp only closes what is left after it.
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        self._stop_requests = 0
        self._stop_waiting = asyncio.Event()
        self._stopping = asyncio.Event()
        self._reloading: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.listen_host, self.config.listen_port,
                           backlog=1024, reuse_address=True)
        await site.start()
        tune_gc()  # start-up is done: what it built is frozen out of the collector's view
        for warning in self.config.warnings:
            log.warning("%s", warning)
        log.info("listening on http://%s with %d backends", self.config.listen, len(self.config.endpoints))
        self.notifier.ready(self._status())
        interval = watchdog_interval()
        if interval:
            self._watchdog = asyncio.create_task(watchdog(self.notifier, interval))

    def _status(self) -> str:
        fleet = self.app[ROUTER].fleet
        healthy = len(fleet.healthy())
        return f"serving on {self.config.listen}: {healthy} of {len(fleet.backends)} backends up"

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        await self.start()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)
        await self._stopping.wait()
        await self.shutdown()
        return 0

    def request_stop(self, why: str = "stop requested") -> None:
        """First call: drain. Second call: stop waiting for in-flight requests."""

        self._stop_requests += 1
        if self._stop_requests == 1:
            log.info("%s: no new connections; letting in-flight requests finish (up to %gs)",
                     why, self.config.drain_timeout)
            self.notifier.stopping()
            self._stopping.set()
        elif self._stop_requests == 2:
            log.warning("%s again: closing in-flight requests now", why)
            self._stop_waiting.set()

    async def shutdown(self) -> None:
        """Stop listening, let in-flight requests finish, then close the rest and clean up
        (the app's cleanup stops the poller and flushes what is pending)."""

        cancel_quietly(self._watchdog)
        cancel_quietly(self._reloading)
        router = self.app[ROUTER]
        for site in list(self.runner.sites):
            await site.stop()
        await router.begin_shutdown()
        left = await self._drain(router)
        if left:
            log.warning("closing %d request(s) still in flight after the drain", left)
        await self.runner.cleanup()
        self.notifier.close()
        log.info("stopped")

    async def _drain(self, router) -> int:
        """Wait until no request is in flight, the drain timeout passes, or a second signal."""

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        while router.active_requests and loop.time() < deadline and not self._stop_waiting.is_set():
            self.notifier.status(f"draining: {router.active_requests} request(s) in flight")
            try:
                await asyncio.wait_for(self._stop_waiting.wait(), 0.05)
            except TimeoutError:
                pass
        return router.active_requests

    def _schedule_reload(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self.reload())

    async def reload(self) -> bool:
        """Re-read the configuration file and swap it in; keep the old one on any error."""

        if not self.config_path:
            log.warning("reload requested, but the router runs without a configuration file")
            return False
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready(f"reload failed, running the previous configuration: {exc}")
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
        self.notifier.ready(self._status())
        return True
