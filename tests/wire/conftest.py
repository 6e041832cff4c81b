"""Every test of the upstream client runs twice: on asyncio's own loop and on uvloop (the
daemon's loop), whose transports call the protocol differently (reads, EOF, write buffers)."""

import asyncio

import uvloop


def pytest_asyncio_loop_factories(config, item):
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
