"""Start, serve, reload and stop the daemon.

SIGTERM/SIGINT: stop accepting connections, let in-flight requests finish (up to
`drain_timeout`), then close the rest and flush; a second signal stops waiting at once.
SIGHUP: re-read the configuration; a bad file leaves the running one in place, its error logged.
A SIGHUP during a reload schedules one more reload after it (however many arrive), so the file
on disk at the last SIGHUP is always the one applied. systemd hears about each step through
sd_notify.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import replace

from aiohttp import web

from .app import build_app
from .config import Config, ConfigError, load_config
from .connections import GuardedRunner, Limits, raise_file_limit
from .gctune import tune_gc
from .keys import ROUTER
from .logs import set_level
from .systemd import Notifier, cancel_quietly, watchdog, watchdog_interval
from .wording import counted

log = logging.getLogger("nomyo.daemon")
SHUTDOWN_NOTICE = "the router is shutting down"  # the last line of streams still running when the drain ends
ENDING_GRACE = 1.0  # seconds those streams get to write it


class Daemon:
    """One running router process: the app runner, its listening site and its signals."""

    def __init__(self, config: Config, config_path: str | None, notifier: Notifier | None = None):
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.app = build_app(config)
        # Draining is ours (see shutdown); aiohttp only closes what is left after it. Request
        # bodies are never inflated (a compressed body is refused: guard.py).
        self.runner = GuardedRunner(self.app, Limits.of(config), handler_cancellation=True, access_log=None,
                                    shutdown_timeout=1.0, auto_decompress=False)
        self._stop_requests = 0
        self._stop_waiting = asyncio.Event()
        self._stopping = asyncio.Event()
        self._reloading: asyncio.Task | None = None
        self._reload_again = False
        self._listen_asked = (config.listen_host, config.listen_port)
        self._file_limit = 0
        self._watchdog: asyncio.Task | None = None

    async def start(self) -> None:
        self._file_limit = raise_file_limit()
        self.runner.apply(Limits.of(self.config).within(self._file_limit))
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.listen_host, self.config.listen_port,
                           backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self.runner.cleanup()  # the router's session and tasks, before the error is told
            raise
        tune_gc()  # start-up is done: what it built is frozen out of the collector's view
        for warning in self.config.warnings:
            log.warning("%s", warning)
        log.info("listening on http://%s with %s", self.config.listen, counted(len(self.config.endpoints), "backend"))
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
        left = await self._drain(router, self.config.drain_timeout)
        if left:
            ended = router.pipeline.interrupt_streams(SHUTDOWN_NOTICE)
            log.warning("closing %s still in flight after the drain (%s told why)", counted(left, "request"),
                        counted(ended, "stream"))
            await self._drain(router, ENDING_GRACE)  # time for those streams to write their last line
        await self.runner.cleanup()
        self.notifier.close()
        log.info("stopped")

    async def _drain(self, router, seconds: float) -> int:
        """Wait until no request is in flight, `seconds` pass, or a second signal."""

        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        told = None
        while router.active_requests and loop.time() < deadline and not self._stop_waiting.is_set():
            if router.active_requests != told:
                told = router.active_requests
                self.notifier.status(f"draining: {counted(told, 'request')} in flight")
            try:
                await asyncio.wait_for(self._stop_waiting.wait(), 0.05)
            except TimeoutError:
                pass
        return router.active_requests

    def _schedule_reload(self) -> None:
        """SIGHUP: reload now, or once more after the reload under way (coalesced)."""

        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self._reload_until_current())
        else:
            self._reload_again = True

    async def _reload_until_current(self) -> None:
        self._reload_again = True
        while self._reload_again:
            self._reload_again = False
            await self.reload()

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
        config = self._keep_listening(config)
        changed = await self.app[ROUTER].reload(config)
        self.runner.apply(Limits.of(config).within(self._file_limit))
        set_level(config.log_level)
        for warning in config.warnings:
            log.warning("%s", warning)
        self.config = config
        summary = "; ".join(changed) if changed else "nothing changed"
        log.info("configuration reloaded from %s: %s", self.config_path, summary)
        self.notifier.ready(self._status())
        return True

    def _keep_listening(self, config: Config) -> Config:
        """`config` with the address the daemon really serves on (changing it takes a restart),
        so logs, /api/config and sd_notify keep telling the truth; one warning per change."""

        asked, serving = (config.listen_host, config.listen_port), (self.config.listen_host, self.config.listen_port)
        if asked != self._listen_asked and asked != serving:
            log.warning("listen changed to %s in %s: that takes a restart; still serving on %s",
                        config.listen, self.config_path, self.config.listen)
        self._listen_asked = asked
        return replace(config, listen_host=serving[0], listen_port=serving[1])
