"""Command line: `nomyo-router [--config PATH] [--check-config [PATH]] [--version]`."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from . import __version__
from .config import ConfigError, load_config, load_config_or_default, parse_listen, resolve_config_path
from .logs import setup_logging
from .wording import counted


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nomyo-router",
        description="Ollama- and OpenAI-compatible router in front of a fleet of LLM servers.",
    )
    parser.add_argument("--config", metavar="PATH",
                        help="configuration file (default: $NOMYO_ROUTER_CONFIG or /etc/nomyo/config.yaml)")
    parser.add_argument("--check-config", nargs="?", const="", metavar="PATH",
                        help="validate the configuration and exit (0 if valid)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="override the configured listen address")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help="override the configured log level")
    parser.add_argument("--version", action="version", version=f"nomyo-router {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = resolve_config_path(args.check_config or args.config)
    try:
        # a missing default file means the defaults when serving, but a check has nothing to check
        config = load_config(path) if args.check_config is not None else load_config_or_default(path)
    except ConfigError as exc:
        for problem in exc.problems:  # every error in the file, one a line
            print(f"nomyo-router: {problem}", file=sys.stderr)
        return 2 if args.check_config is None else 1
    if args.check_config is not None:
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{path}: OK ({counted(len(config.endpoints), 'endpoint')}, listen {config.listen})")
        return 0
    if args.listen:
        try:
            host, port = parse_listen(args.listen)
        except ValueError as exc:
            print(f"nomyo-router: --listen {exc}", file=sys.stderr)
            return 2
        config = replace(config, listen_host=host, listen_port=port)
    setup_logging(args.log_level or config.log_level)
    return _run(config)


def _run(config) -> int:
    import uvloop

    from .daemon import Daemon

    async def serve() -> int:
        return await Daemon(config, config.path).run()

    try:
        return uvloop.run(serve())
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
        print(f"nomyo-router: cannot listen on {config.listen}: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
