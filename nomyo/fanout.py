"""Run one model-management call on several backends at once, and say how each one ended.

Pull, push, create, copy, delete and blob uploads go to every target backend in parallel: a
slow or failing backend never holds up or stops the others, and the answer names each failure.
Progress streams (pull, push, create) are merged into one stream in Ollama's shape, with the
bytes of each layer summed across backends, so an `ollama pull` through the router shows one
progress bar for the whole fleet.

Nothing here keeps state between requests: a `Report` and its streams live for one request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .dialects.ollama import NDJSON
from .fleet import Backend
from .upstream import describe, request_headers

log = logging.getLogger("nomyo.fanout")

QUICK_TIMEOUT = 120.0  # copy, delete, blob HEAD: seconds of silence before the backend counts as failed
ERROR_BODY_LIMIT = 65536  # an error answer longer than this is cut (it is shown to a person)
LINE_LIMIT = 1 << 20  # a progress line is ~200 bytes; a longer "line" is not Ollama talking
QUEUE_DEPTH = 256  # progress lines waiting for the client; beyond it the backends' streams wait

Emit = Callable[[dict], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one backend ended: `success`, `failed` (with its status and error), `absent` (it does
    not have the model or blob), or `skipped` (not asked, with the reason)."""

    state: str
    status: int = 200
    error: str | None = None

    @classmethod
    def failed(cls, status: int, error: str) -> Outcome:
        return cls("failed", status, error)

    @classmethod
    def skipped(cls, reason: str) -> Outcome:
        return cls("skipped", 0, reason)

    def report(self) -> dict[str, Any]:
        """This backend's entry in the `backends` object of an answer."""

        if self.state == "skipped":
            return {"status": "skipped", "reason": self.error}
        if self.state == "success":
            return {"status": "success"}
        return {"status": self.state, "code": self.status, "error": self.error}


@dataclass(slots=True)
class Report:
    """Every backend's outcome of one operation, and what the client is told about them."""

    operation: str  # e.g. "pull 'llama3:latest'", used in messages
    not_found: str  # the message when no backend had the model (404)
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    def _in(self, state: str) -> list[tuple[str, Outcome]]:
        return [(name, o) for name, o in self.outcomes.items() if o.state == state]

    @property
    def ok(self) -> bool:
        return not self._in("failed") and bool(self._in("success"))

    @property
    def status(self) -> int:
        """200 (or 201) when every asked backend succeeded; 404 when none had the model; the
        backends' own status when all failed alike (one backend: exactly its answer); else 502."""

        failed, succeeded = self._in("failed"), self._in("success")
        if not failed:
            return max((o.status for _, o in succeeded), default=404)
        asked = [o for o in self.outcomes.values() if o.state != "skipped"]
        statuses = {o.status for _, o in failed}
        if len(asked) == 1 or (not succeeded and len(statuses) == 1):
            return statuses.pop()
        return 502

    @property
    def message(self) -> str:
        failed, asked = self._in("failed"), [o for o in self.outcomes.values() if o.state != "skipped"]
        if not failed:
            return "success" if self._in("success") else self.not_found
        if len(asked) == 1:
            return failed[0][1].error or "failed"
        parts = "; ".join(f"{name}: {o.error}" for name, o in failed)
        text = f"{self.operation} failed on {len(failed)} of {len(asked)} backends: {parts}"
        succeeded = [name for name, _ in self._in("success")]
        return text + (f" (succeeded on {', '.join(succeeded)})" if succeeded else "")

    def body(self) -> dict[str, Any]:
        """The answer as Ollama shapes it, plus a `backends` object that clients ignore."""

        backends = {name: o.report() for name, o in self.outcomes.items()}
        head = {"status": "success"} if self.ok else {"error": self.message}
        return {**head, "backends": backends}

    def response(self) -> web.Response:
        response = web.Response(status=self.status, body=orjson.dumps(self.body()))
        response.headers["Content-Type"] = "application/json; charset=utf-8"
        return response


@dataclass(frozen=True, slots=True)
class Upstream:
    """How the router talks to backends for these calls: the shared session and its manners."""

    session: aiohttp.ClientSession
    connect_timeout: float

    def headers(self, backend: Backend, content_type: str = "application/json") -> dict[str, str]:
        return request_headers(backend, content_type=content_type)

    def timeout(self, read: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.connect_timeout, sock_read=read)

    async def call(self, backend: Backend, method: str, path: str, data: Any = None, *,
                   headers: dict[str, str] | None = None, read_timeout: float | None = QUICK_TIMEOUT,
                   absent_on_404: bool = False) -> Outcome:
        """One request whose answer is a status and maybe an error (copy, delete, blobs)."""

        try:
            async with self.session.request(method, backend.config.url + path, data=data,
                                            headers=headers or self.headers(backend),
                                            timeout=self.timeout(read_timeout)) as resp:
                if resp.status < 400:
                    await resp.read()
                    return Outcome("success", resp.status)
                error = await error_of(resp)
                return Outcome("absent" if absent_on_404 and resp.status == 404 else "failed", resp.status, error)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Outcome.failed(502, describe(exc, read_timeout))

    async def progress(self, backend: Backend, path: str, body: bytes, emit: Emit) -> Outcome:
        """One streamed operation (pull, push, create): each progress line goes to `emit`; the
        backend succeeded when it said `success`, failed when it said `error` or stopped short."""

        try:
            async with self.session.post(backend.config.url + path, data=body, headers=self.headers(backend),
                                         timeout=self.timeout(None)) as resp:
                if resp.status >= 400:
                    return Outcome.failed(resp.status, await error_of(resp))
                async for line in ndjson_lines(resp.content):
                    obj = _object(line)
                    if obj is None:
                        return Outcome.failed(502, f"invalid progress line: {line[:120].decode(errors='replace')}")
                    if obj.get("error") is not None:
                        return Outcome.failed(500, str(obj["error"]))
                    if obj.get("status") == "success":
                        return Outcome("success")
                    await emit(obj)
                return Outcome.failed(502, "the answer ended before the operation finished")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Outcome.failed(502, describe(exc, None))


async def error_of(resp: aiohttp.ClientResponse) -> str:
    """The `error` of an Ollama error answer, else its text, else its status line."""

    data = b""
    async for chunk in resp.content.iter_any():
        data += chunk
        if len(data) >= ERROR_BODY_LIMIT:
            break
    obj = _object(data[:ERROR_BODY_LIMIT])
    if obj is not None and isinstance(obj.get("error"), str):
        return obj["error"]
    text = data[:ERROR_BODY_LIMIT].decode(errors="replace").strip()
    return text or f"{resp.status} {resp.reason or ''}".strip()


async def ndjson_lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Non-empty lines as they complete, whatever the chunking; the last one may lack its newline."""

    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
        if len(buffer) > LINE_LIMIT:
            raise ValueError("a progress line longer than 1 MiB")
    if buffer.strip():
        yield buffer


def _object(data: bytes) -> dict | None:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class ProgressMerger:
    """Turns the progress lines of N backends into one Ollama-shaped stream.

    A line about a layer (it has a `digest`) becomes that layer's total and completed bytes
    summed over the backends that reported it so far; a plain status (`pulling manifest`,
    `writing manifest`) is said once, when the first backend gets there."""

    def __init__(self) -> None:
        self._layers: dict[str, dict[str, tuple[int, int]]] = {}
        self._said: set[str] = set()

    def merge(self, backend: str, line: dict) -> dict | None:
        status, digest = line.get("status"), line.get("digest")
        if isinstance(digest, str) and digest:
            seen = self._layers.setdefault(digest, {})
            seen[backend] = (_count(line.get("total")), _count(line.get("completed")))
            out: dict[str, Any] = {"status": status if isinstance(status, str) else "", "digest": digest}
            total, completed = sum(t for t, _ in seen.values()), sum(c for _, c in seen.values())
            if total:  # Ollama omits zero counts (omitempty)
                out["total"] = total
            if completed:
                out["completed"] = completed
            return out
        if not isinstance(status, str) or not status or status in self._said:
            return None
        self._said.add(status)
        return {"status": status}


class ProgressStream:
    """The merged stream to the client, prepared at the first line worth sending: an operation
    that every backend refused before it started is answered with a plain error status instead.
    Without streaming nothing is sent until the end."""

    def __init__(self, request: web.Request, streaming: bool, notices: Iterable[dict] = ()):
        self.request = request
        self.streaming = streaming
        self.response: web.StreamResponse | None = None
        self._notices = list(notices)

    async def send(self, line: dict) -> None:
        if not self.streaming:
            return
        if self.response is None:
            self.response = web.StreamResponse(headers={"Content-Type": NDJSON})
            await self.response.prepare(self.request)
            for notice in self._notices:
                await self.response.write(orjson.dumps(notice) + b"\n")
        await self.response.write(orjson.dumps(line) + b"\n")

    async def notice(self, line: dict) -> None:
        """A remark (a backend failed, one was skipped): sent only once progress is flowing."""

        if self.response is not None:
            await self.response.write(orjson.dumps(line) + b"\n")
        else:
            self._notices.append(line)

    async def finish(self, report: Report) -> web.StreamResponse:
        """End with `{"status":"success"}`, or an `{"error": ...}` line naming each failure."""

        if self.response is None and not (self.streaming and report.ok):
            return report.response()
        last = {"status": "success"} if report.ok else report.body()
        if self.response is None:
            await self.send(last)
        else:
            await self.response.write(orjson.dumps(last) + b"\n")
        await self.response.write_eof()
        return self.response


async def run_progress(upstream: Upstream, targets: list[Backend], path: str, body: bytes,
                       stream: ProgressStream) -> dict[str, Outcome]:
    """Run the operation on every target at once, relaying merged progress to `stream` as it
    comes; return each target's outcome. A client that goes away cancels every upstream call
    (the backends see their connections close, as Ollama cancels a pull whose client left)."""

    queue: asyncio.Queue[tuple[str, dict | Outcome]] = asyncio.Queue(maxsize=QUEUE_DEPTH)

    async def one(backend: Backend) -> None:
        async def emit(line: dict) -> None:
            await queue.put((backend.name, line))

        try:
            outcome = await upstream.progress(backend, path, body, emit)
        except Exception as exc:  # a bug here must not leave the merge waiting forever
            log.exception("%s on %s failed unexpectedly", path, backend.name)
            outcome = Outcome.failed(500, f"internal error in the router: {type(exc).__name__}")
        await queue.put((backend.name, outcome))

    tasks = [asyncio.create_task(one(b), name=f"{path} {b.name}") for b in targets]
    merger, outcomes = ProgressMerger(), {}
    try:
        while len(outcomes) < len(targets):
            name, item = await queue.get()
            if isinstance(item, Outcome):
                outcomes[name] = item
                if item.state == "failed":
                    await stream.notice({"status": f"{name} failed: {item.error}"})
            elif (line := merger.merge(name, item)) is not None:
                await stream.send(line)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return outcomes


async def run_calls(calls: dict[str, Awaitable[Outcome]]) -> dict[str, Outcome]:
    """Await several `Upstream.call`s at once; outcomes by backend name, in the given order."""

    results = await asyncio.gather(*calls.values())
    return dict(zip(calls, results, strict=True))
