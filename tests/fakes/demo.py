"""`make demo`: the real router daemon in front of two simulated Ollama servers.

Runs anywhere (no GPU, no models): the simulated backends stream real NDJSON at a visible pace,
and the router is started as its own process with a generated config, exactly as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import aiohttp

from .ollama_backend import FakeOllama

DEFAULT_PORT = 12434


def free_port(preferred: int) -> int:
    """`preferred` if it is free, else any free port."""

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port")


def write_config(directory: str, port: int, backends: list[FakeOllama]) -> Path:
    lines = [f"listen: 127.0.0.1:{port}", "max_concurrent_connections: 2", "poll_interval: 1",
             f"db_path: {Path(directory) / 'usage.db'}", "endpoints:"]
    for fake in backends:
        lines += [f"  - name: {fake.name}", f"    url: {fake.url}"]
    path = Path(directory) / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def wait_ready(url: str, process: asyncio.subprocess.Process, timeout: float = 20.0) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(int(timeout / 0.1)):
            if process.returncode is not None:
                raise RuntimeError(f"the router exited with status {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/api/tags") as resp:
                    if resp.status == 200 and (await resp.json())["models"]:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("the router did not become ready")


def banner(url: str, config: Path, backends: list[FakeOllama]) -> str:
    names = ", ".join(f"{b.name} at {b.url}" for b in backends)
    return f"""
nomyo-router demo
  router:   {url}
  backends: {names} (simulated Ollama)
  config:   {config}

Try:
  curl {url}/api/tags
  curl {url}/api/chat -d '{{"model": "llama3.2", "messages": [{{"role": "user", "content": "hello"}}]}}'
  curl {url}/api/generate -d '{{"model": "qwen3:0.6b", "prompt": "hi", "stream": false}}'
  curl {url}/api/ps

Ctrl-C stops everything.
"""


async def run(port: int, seconds: float | None) -> int:
    backends = [
        FakeOllama("ollama-a", models=["llama3.2:latest", "qwen3:0.6b"], loaded=["llama3.2:latest"],
                   token_delay=0.05, reply="Hello from {name}, one of the simulated Ollama servers."),
        FakeOllama("ollama-b", models=["llama3.2:latest", "all-minilm:latest"], token_delay=0.05,
                   reply="Hello from {name}, one of the simulated Ollama servers."),
    ]
    for fake in backends:
        await fake.start()
    port = free_port(port) if port else free_port(0)
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="nomyo-demo-") as directory:
        config = write_config(directory, port, backends)
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "nomyo", "--config", str(config))
        try:
            await wait_ready(url, process)
            print(banner(url, config, backends), flush=True)
            await wait_for_stop(process, seconds)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()
            for fake in backends:
                await fake.stop()
    return 0


async def wait_for_stop(process: asyncio.subprocess.Process, seconds: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(process.wait())]
    await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", DEFAULT_PORT)),
                        help="router port (default 12434, or a free one if taken; 0 = any)")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    args = parser.parse_args()
    return asyncio.run(run(args.port, args.seconds))


if __name__ == "__main__":
    sys.exit(main())
