"""`make demo`: the real router daemon in front of three simulated servers, both APIs at work.

Runs anywhere (no GPU, no models): two simulated Ollama servers (with Ollama's own `/v1`) and one
simulated OpenAI-compatible server (shaped like vLLM) stream real NDJSON and SSE at a visible
pace. The router is started as its own process with a generated config, exactly as in
production, so an Ollama client asking for the vLLM model sees the router translate, and an
OpenAI client finds every model under `/v1`.
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
from .ollama_v1 import FakeOllamaV1
from .openai_backend import FakeOpenAI

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


OLLAMA_REPLY = "Hello from {name}, one of the simulated Ollama servers."
OPENAI_REPLY = "Hello from {name}, the simulated OpenAI-compatible server (vLLM), via the router."
OPENAI_MODEL = "mistral-7b-instruct"


def simulated_backends() -> tuple[list[FakeOllama], FakeOpenAI]:
    ollama = [
        FakeOllamaV1("ollama-a", models=["llama3.2:latest", "qwen3:0.6b"], loaded=["llama3.2:latest"],
                     token_delay=0.05, reply=OLLAMA_REPLY),
        FakeOllamaV1("ollama-b", models=["llama3.2:latest", "all-minilm:latest"], token_delay=0.05,
                     reply=OLLAMA_REPLY),
    ]
    return ollama, FakeOpenAI("vllm-c", models=[OPENAI_MODEL], token_delay=0.05, reply=OPENAI_REPLY)


def write_config(directory: str, port: int, ollama: list[FakeOllama], openai: FakeOpenAI) -> Path:
    lines = [f"listen: 127.0.0.1:{port}", "max_concurrent_connections: 2", "poll_interval: 1",
             f"db_path: {Path(directory) / 'usage.db'}", "endpoints:"]
    for fake in ollama:
        lines += [f"  - name: {fake.name}", f"    url: {fake.url}"]
    lines += [f"  - name: {openai.name}", f"    url: {openai.url}/v1", "    type: openai"]
    path = Path(directory) / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def wait_ready(url: str, process: asyncio.subprocess.Process, expected: int, timeout: float = 20.0) -> None:
    """Until the router answers and has seen every backend up (so the first try works)."""

    async with aiohttp.ClientSession() as session:
        for _ in range(int(timeout / 0.1)):
            if process.returncode is not None:
                raise RuntimeError(f"the router exited with status {process.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/health") as resp:
                    if resp.status == 200 and (await resp.json())["healthy_backends"] == expected:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("the router did not become ready")


def interpreter() -> str:
    """This Python as the reader would type it (`.venv/bin/python` from the checkout)."""

    relative = os.path.relpath(sys.executable)
    return relative if not relative.startswith("..") else sys.executable


def client_lines(url: str) -> tuple[str, str]:
    """One runnable line each for the `ollama` and `openai` Python clients (both in .venv)."""

    python = interpreter()
    hello = '[{"role": "user", "content": "hello"}]'
    ollama = (f"{python} -c 'import ollama; print(ollama.Client(\"{url}\").chat(model=\"{OPENAI_MODEL}\", "
              f"messages={hello}).message.content)'")
    openai = (f"{python} -c 'import openai; print(openai.OpenAI(base_url=\"{url}/v1\", api_key=\"demo\")"
              f".chat.completions.create(model=\"llama3.2\", messages={hello}).choices[0].message.content)'")
    return ollama, openai


def banner(url: str, config: Path, ollama: list[FakeOllama], openai: FakeOpenAI) -> str:
    servers = [f"{b.name} at {b.url} (simulated Ollama: {', '.join(b.models)})" for b in ollama]
    servers.append(f"{openai.name} at {openai.url}/v1 (simulated OpenAI-compatible server, vLLM: {OPENAI_MODEL})")
    ollama_line, openai_line = client_lines(url)
    listing = "\n            ".join(servers)
    return f"""
nomyo-router demo
  Ollama API: {url}
  OpenAI API: {url}/v1   (base_url for OpenAI clients; any api_key)
  dashboard:  {url}/   (open it in a browser)
  backends:   {listing}
  config:     {config}

Try:
  curl {url}/api/tags
  curl {url}/api/chat -d '{{"model": "llama3.2", "messages": [{{"role": "user", "content": "hello"}}]}}'
  curl {url}/v1/chat/completions -d '{{"model": "llama3.2", "messages": [{{"role": "user", "content": "hello"}}]}}'
  curl {url}/v1/models

The ollama client asking for {OPENAI_MODEL} (served by the OpenAI-compatible backend: the router
translates), and the openai client asking for llama3.2 (served by Ollama):
  {ollama_line}
  {openai_line}

Ctrl-C stops everything.
"""


async def run(port: int, seconds: float | None) -> int:
    ollama, openai = simulated_backends()
    for fake in ollama:
        await fake.start()
    await openai.start()
    port = free_port(port) if port else free_port(0)
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="nomyo-demo-") as directory:
        config = write_config(directory, port, ollama, openai)
        # its own session: Ctrl-C reaches the demo alone, which stops the router with one SIGTERM
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "nomyo", "--config", str(config),
                                                       start_new_session=True)
        try:
            await wait_ready(url, process, expected=len(ollama) + 1)
            print(banner(url, config, ollama, openai), flush=True)
            await wait_for_stop(process, seconds)
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()
            for fake in [*ollama, openai]:
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
