"""Logging for the journal: stderr lines with `<N>` priority prefixes under systemd.

journald reads the `<N>` prefix as the syslog priority and stamps its own time, so under
systemd (JOURNAL_STREAM is set) lines carry no timestamp; on a terminal they carry one.

Logged values come from clients and backends (model names, paths, error texts): a newline in
one would write a forged line of its own, an ANSI escape would repaint the operator's terminal.
The formatter escapes every control character of the message (`\\x0a`) and cuts every value
to `VALUE_LIMIT` characters, for every logger at once; tracebacks stay as they are.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping

from aiohttp.http_exceptions import HttpProcessingError

PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
VALUE_LIMIT = 2048  # characters of one logged value (an access line is one value)
# C0 and C1 controls, DEL, and Unicode's line and paragraph separators
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escaped(text: str) -> str:
    """`text` with every control character written as `\\xNN` (or `\\uNNNN`)."""

    if CONTROL.search(text) is None:  # the usual case, and the cheap one
        return text
    return CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def clipped(text: str, limit: int = VALUE_LIMIT) -> str:
    """`text`, cut to `limit` characters with a note of how much was left out."""

    return text if len(text) <= limit else f"{text[:limit]}...({len(text) - limit} more)"


def _safe(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # keeps %d and %.1f working
    return clipped(escaped(str(value)))


def safe_message(record: logging.LogRecord) -> str:
    """The record's message with each argument escaped and cut, then escaped as a whole (a
    message logged without arguments may carry a value too)."""

    args = record.args
    if isinstance(args, Mapping):
        args = {key: _safe(value) for key, value in args.items()}
    elif args:
        args = tuple(_safe(value) for value in args)
    message = str(record.msg)
    if args:
        try:
            message = message % args
        except (TypeError, ValueError):
            message = f"{message} {args!r}"
    return escaped(message)


class SafeFormatter(logging.Formatter):
    """A Formatter whose message is `safe_message`; the traceback below it is left intact."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = safe_message(record)
        return super().formatMessage(record)


class JournalFormatter(SafeFormatter):
    """`<6>nomyo.access: POST /api/chat ...` — priority from the level, no timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITIES.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def under_journal() -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM=dev:inode)."""

    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        device, inode = (int(part) for part in stream.split(":"))
        info = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class ClientMistakes(logging.Filter):
    """aiohttp logs a request it cannot parse (not HTTP, a line too long, a body it cannot
    decode) with a traceback at ERROR: that is the client's mistake, answered 400, and a client
    must not be able to fill the journal with tracebacks. Kept at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and (error.code or 400) < 500:
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def setup_logging(level: str = "info") -> None:
    """Send the `nomyo` and `aiohttp` loggers to stderr in the journal's or a terminal's format."""

    handler = logging.StreamHandler(sys.stderr)
    if under_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("nomyo", "aiohttp"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.getLogger("aiohttp.access").disabled = True  # our own access line replaces it
    logging.getLogger("aiohttp.server").addFilter(ClientMistakes())
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger("nomyo").setLevel(LEVELS.get(level, logging.INFO))
    logging.getLogger("aiohttp").setLevel(max(LEVELS.get(level, logging.INFO), logging.WARNING))
