"""The one stream loop: an upstream answer, chunk by chunk, through a framing, into a sink.

Every streamed answer — Ollama's NDJSON relayed, OpenAI's SSE relayed, SSE translated to NDJSON
— goes through `pump`, so the idle clock, the client leaving, a backend breaking off, and the
end of the stream are handled here once. Bytes go out as they come (`await sink.write` is the
backpressure); the idle clock stands still while the client is slow to take a chunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp

from .call import Outcome
from .dialects.openai import LineTooLong
from .framing import Framing
from .sinks import Sink
from .upstream import IdleWatch

log = logging.getLogger("nomyo.stream")

OK = "ok"
BACKEND_FAILED = "backend-failed-mid-stream"  # the connection broke, went silent, or ended short
BACKEND_ERROR = "backend-error"  # the backend ended the stream with its own error line
CLIENT_GONE = "client-disconnected"
SHUT_DOWN = "shutdown"  # the drain ran out: the router ended the stream


@dataclass(frozen=True, slots=True)
class Ending:
    """How a stream ended: `kind` (ok, backend-error, backend-failed-mid-stream,
    client-disconnected) and, for a failure the router told the client about, the reason."""

    kind: str
    reason: str | None = None


async def pump(upstream: aiohttp.ClientResponse, framing: Framing, sink: Sink, outcome: Outcome,
               idle: float, backend: str, live: set[IdleWatch]) -> Ending:
    """Relay `upstream` to `sink` until it ends. A client that goes away ends it quietly (a
    cancelled handler raises on; the caller closes the upstream); a backend that breaks off or
    stops short gets an error line in the client's dialect, as Ollama ends a failed run. While it
    runs its watch is in `live`, where the drain can interrupt it."""

    await sink.open(upstream.status, framing.headers(upstream))
    watch = IdleWatch(upstream, idle)
    live.add(watch)
    try:
        async for chunk in upstream.content.iter_any():
            out = framing.feed(chunk)
            if out:
                watch.writing = True
                await sink.write(out)
                watch.writing = False
                outcome.first_byte()
            watch.touch()
        out = framing.close()
        if out:
            await sink.write(out)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        return Ending(CLIENT_GONE)
    except aiohttp.ClientError as exc:
        if watch.interruption is not None:
            await sink.close(framing.error_line(watch.interruption), complete=False)
            return Ending(SHUT_DOWN, watch.interruption)
        return await _broken(sink, framing, backend, watch.reason(exc))
    except LineTooLong as exc:
        return await _broken(sink, framing, backend, str(exc))
    finally:
        live.discard(watch)
        watch.stop()
    if framing.complete:
        await sink.close(complete=True)
        return Ending(OK)
    if framing.backend_failed:  # the backend's own error line went through: the stream is over
        await sink.close(complete=False)
        return Ending(BACKEND_ERROR)
    return await _broken(sink, framing, backend, "the stream ended without its final line")


async def _broken(sink: Sink, framing: Framing, backend: str, reason: str) -> Ending:
    message = f"backend {backend} failed mid-stream: {reason}"
    log.warning("%s", message)
    await sink.close(framing.error_line(message), complete=False)
    return Ending(BACKEND_FAILED, message)
