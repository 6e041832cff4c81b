"""sd_notify without libsystemd: a datagram to $NOTIFY_SOCKET per state change.

With `Type=notify` systemd waits for READY=1 before it calls the service started, shows STATUS=
in `systemctl status`, brackets a reload with RELOADING=1 (+ MONOTONIC_USEC) … READY=1, and knows
a stop is deliberate from STOPPING=1. WATCHDOG=1 pings keep a `WatchdogSec=` unit alive while the
event loop is responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

log = logging.getLogger("nomyo.systemd")


class Notifier:
    """Sends sd_notify messages; does nothing when not started by systemd with NOTIFY_SOCKET."""

    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self.address = address or None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> None:
        if self.address is None:
            return
        message = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address.lstrip("\0"), exc)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                    "STATUS=reloading configuration")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=draining in-flight requests")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of WATCHDOG_USEC (as sd_watchdog_enabled advises), when the watchdog is for us."""

    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


async def watchdog(notifier: Notifier, interval: float) -> None:
    """Ping while the event loop runs; a stuck loop stops the pings and systemd restarts us."""

    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def cancel_quietly(task: asyncio.Task | None) -> None:
    if task is not None:
        with contextlib.suppress(Exception):
            task.cancel()
