"""Run fake Ollama servers until SIGINT/SIGTERM: ``python -m tests.fakes``.

Each ``--port`` starts the description of a new fake; options given before the first
``--port`` apply to every fake. For example, two fakes sharing a token delay::

    python -m tests.fakes --token-delay 0.05 \\
        --port 11435 --name a --models llama3:latest,qwen3:0.6b --loaded llama3:latest \\
        --port 11436 --name b --models qwen3:0.6b --num-parallel 2

One line per fake, ``fake ollama <name> listening on http://127.0.0.1:PORT``, is printed
(and flushed) once it listens, so scripts can wait for it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
import string
import sys

from .ollama_backend import FakeOllama


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.fakes",
        description="Run one or more fake Ollama servers (each --port starts a new one).",
    )
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--name", help="fake's name, used in replies and logs (default a, b, c, ...)")
    p.add_argument("--models", type=_csv, default=["llama3:latest"], help="comma-separated local models")
    p.add_argument("--loaded", type=_csv, default=[], help="comma-separated models loaded at start")
    p.add_argument("--version", default="0.12.3", help="version reported by /api/version")
    p.add_argument("--reply", default="Hello from {name}", help="reply text; {name} and {model} are filled in")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds per streamed token")
    p.add_argument("--num-parallel", type=int, default=None, help="requests served at once per model")
    p.add_argument("--keep-alive", type=float, default=300.0, help="default keep-alive in seconds")
    p.add_argument("--load-delay", type=float, default=0.0, help="seconds to load a model that is not loaded")
    p.add_argument("--embedding-dim", type=int, default=8, help="length of embedding vectors")
    p.add_argument("--strict-host", action="store_true", help="403 unless Host is this fake's own host:port")
    p.add_argument("--verbose", "-v", action="store_true", help="log every request to stderr")
    return p


def parse_fakes(argv: list[str]) -> tuple[list[argparse.Namespace], bool]:
    """Split ``argv`` at each ``--port`` and parse every group on top of the shared options."""
    parser = build_parser()
    starts = [i for i, arg in enumerate(argv) if arg == "--port" or arg.startswith("--port=")]
    shared = argv[: starts[0]] if starts else argv
    groups = [argv[a:b] for a, b in itertools.pairwise([*starts, len(argv)])] or [[]]
    configs = [parser.parse_args(shared + group) for group in groups]
    for i, ns in enumerate(configs):
        ns.name = ns.name or (string.ascii_lowercase[i] if i < 26 else f"fake{i + 1}")
    names = [ns.name for ns in configs]
    if len(set(names)) != len(names):
        parser.error(f"fake names must be unique, got {names}")
    return configs, any(ns.verbose for ns in configs)


async def serve(configs: list[argparse.Namespace]) -> None:
    """Start every fake, print where it listens, wait for SIGINT/SIGTERM, stop them all."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fakes: list[FakeOllama] = []
    try:
        for ns in configs:
            fake = FakeOllama(
                name=ns.name,
                models=ns.models,
                loaded=ns.loaded,
                version=ns.version,
                reply=ns.reply,
                token_delay=ns.token_delay,
                num_parallel=ns.num_parallel,
                keep_alive_s=ns.keep_alive,
                load_delay=ns.load_delay,
                embedding_dim=ns.embedding_dim,
                strict_host=ns.strict_host,
            )
            fakes.append(fake)
            url = await fake.start(port=ns.port, host=ns.host)
            print(f"fake ollama {fake.name} listening on {url}", flush=True)
        await stop.wait()
    finally:
        for fake in fakes:
            await fake.stop()


def main(argv: list[str] | None = None) -> int:
    configs, verbose = parse_fakes(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    try:
        asyncio.run(serve(configs))
    except OSError as exc:
        print(f"fake ollama: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
