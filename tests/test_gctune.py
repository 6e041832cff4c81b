"""Garbage collection tuned once the daemon has started (nomyo/gctune.py)."""

from __future__ import annotations

import gc
from dataclasses import replace

import aiohttp
import pytest

from nomyo.daemon import Daemon
from nomyo.gctune import THRESHOLDS
from tests.conftest import router_config


@pytest.fixture
def restored_gc():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


async def test_a_started_daemon_froze_its_start_up_objects(fakes, restored_gc, tmp_path, unused_tcp_port):
    """1. A daemon starts in this process (app, routes, router, poller: all built).
    Result: what start-up built is frozen out of the collector's view (its app among it), the
    thresholds are the request-heavy ones, and the daemon still serves and stops."""

    a = await fakes("a")
    config = replace(router_config([a], db_path=str(tmp_path / "usage.db")), listen_port=unused_tcp_port)
    gc.unfreeze()
    daemon = Daemon(config, None)
    await daemon.start()
    try:
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == THRESHOLDS
        assert not any(obj is daemon.app for obj in gc.get_objects())  # frozen objects are not listed
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{unused_tcp_port}/api/tags") as answer:
            assert answer.status == 200 and (await answer.json())["models"]
    finally:
        await daemon.shutdown()
