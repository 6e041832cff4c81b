"""A scriptable fake Ollama server for the router's tests and ``make demo``.

It is a real aiohttp server on a real port: it keeps a model list and a loaded-model list that
requests change, streams NDJSON line by line with real delays, and counts what it sees. Tests
script failures (errors, hangs, cut connections, a dead port) and then look at the counters.
Wire shapes come from ``ollama_formats``; this module is the behaviour around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from . import ollama_formats as fmt
from .answering import ollama_answer
from .ollama_formats import FOREVER, ModelSpec, go_json, go_quote, model_key

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_STREAM_ERROR = "an error was encountered while running the model"
_PULL_ERROR = "max retries exceeded: unexpected EOF"
_NDJSON = {"Content-Type": "application/x-ndjson"}
# What a backend that is not Ollama (or a broken proxy in front of it) may send instead.
GARBLED_LINES = b'{"model": "llama3", "message": {"role": "assis\n\xff\xfe this is not JSON\n'
GARBLED_BODY = b"<html><body>502 Bad Gateway</body></html>\x00\xff"
NOT_HTTP = b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage\r\n\r\n"


@dataclass
class RecordedRequest:
    """One request as the fake received it (every request, including rejected ones)."""

    method: str
    path: str
    json: Any  # the parsed JSON body, or None (no body, not JSON, or a blob upload)
    headers: CIMultiDict  # case-insensitive: ``headers["host"]`` works
    time: float  # time.monotonic() at arrival
    body: bytes


class ApiError(Exception):
    """Answer ``{"error": message}`` with ``status`` (raised anywhere in a handler)."""

    def __init__(self, status: int, message: str, content_type: str = "application/json; charset=utf-8"):
        super().__init__(message)
        self.status, self.message, self.content_type = status, message, content_type

    def response(self) -> web.Response:
        body = go_json({"error": self.message})
        return web.Response(status=self.status, body=body, headers={"Content-Type": self.content_type})


@dataclass
class _Loaded:
    """A model in memory: its expiry (wall clock ns), its keep-alive and how many requests use it."""

    spec: ModelSpec
    expires_ns: int
    keep_alive_s: float
    refs: int = 0


@dataclass
class _Fault:
    """A scripted failure of a chat/generate request after ``after`` tokens."""

    kind: str  # "error": an {"error": ...} line, then the stream ends; "cut": the socket is closed;
    # "reset": the socket is closed before any byte of the answer; "garbage-stream", "garbage-json",
    # "garbage-http": see ``garble_next``
    after: int
    error: str


@dataclass
class _Ticket:
    """Per-request bookkeeping shared by the inference handlers."""

    key: str
    start_ns: int
    load_ns: int = 0
    held: _Loaded | None = None
    response: web.StreamResponse | None = None
    outcome: str = "served"  # or "failed" (error answer/line) or "cut" (socket closed by a fault)


def _text(status: int, text: str, content_type: str) -> web.Response:
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": content_type})


def _line(model: str, text: str, thinking: str, calls: list[tuple[str, dict]], done: bool, chat: bool) -> dict:
    """A chat or generate line with thinking and tool calls where there are any (Go field order)."""
    out = fmt.chunk(model, text, done, chat)
    if chat:
        message = out["message"]
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = [{"id": f"call_{i}", "function": {"index": i, "name": name, "arguments": args}}
                                     for i, (name, args) in enumerate(calls)]
    elif thinking:
        out = {k: v for k, v in out.items() if k != "done"} | {"thinking": thinking, "done": done}
    return out


class FakeOllama:
    """A scriptable Ollama server: really keeps a model list and a loaded-model list, really streams.

    Observation (read them in tests): ``requests``, ``active``/``max_active`` (inference requests
    in flight, including those waiting on ``hang``/``num_parallel``), ``active_by_model``/
    ``max_active_by_model`` (keyed by ``model_key``, e.g. ``llama3:latest``), ``served`` (answered
    normally), ``failed`` (answered with an error or a scripted fault), ``disconnects`` (the
    connection went away before the answer was complete), ``rejected_hosts`` (403s).
    """

    def __init__(
        self,
        name: str = "fake",
        models: Iterable[str | ModelSpec] = ("llama3:latest",),
        loaded: Iterable[str] = (),
        version: str = "0.12.3",
        reply: str = "Hello from {name}",
        token_delay: float = 0.0,
        num_parallel: int | None = None,
        keep_alive_s: float = 300.0,
        load_delay: float = 0.0,
        embedding_dim: int = 8,
        strict_host: bool = False,
        pullable: Iterable[str] | None = None,
        max_recorded: int = 10_000,
        max_loaded: int | None = None,
        spaced: bool = False,
    ):
        self.name = name
        self.version = version
        self.reply = reply
        self.token_delay = token_delay
        self.num_parallel = num_parallel
        self.keep_alive_s = keep_alive_s
        self.load_delay = load_delay
        self.embedding_dim = embedding_dim
        self.strict_host = strict_host
        self.max_loaded = max_loaded
        self.spaced = spaced  # write JSON as Python servers do: `"done": true`, not `"done":true`
        self.tool_call: tuple[str, dict] | None = None  # a request with tools calls this (else its first tool)
        self.pullable = None if pullable is None else {model_key(n) for n in pullable}
        self.max_recorded = max_recorded
        self.gate: asyncio.Event | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self._guard_host = True
        self.reset_observations()
        self._models: dict[str, ModelSpec] = {}
        self._loaded: dict[str, _Loaded] = {}
        self.set_models(models)
        self.set_loaded(loaded)
        self._blobs: dict[str, bytes] = {}
        self._failures: deque[tuple[int, str]] = deque()
        self._faults: deque[_Fault] = deque()
        self._pull_faults: deque[tuple[int, str]] = deque()
        self._running = asyncio.Event()
        self._running.set()
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._scheduler = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Listen on ``host:port`` (0 = a free port) and return the base URL."""
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 30)
        self._add_routes(app.router)
        # handler_cancellation: a client that goes away cancels its handler, as Ollama abandons
        # a request whose context is cancelled (also while it waits on hang/num_parallel).
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self.host = host
        # Ollama only guards the Host header when it listens on a loopback address.
        try:
            self._guard_host = ipaddress.ip_address(host).is_loopback
        except ValueError:
            self._guard_host = host == "localhost"
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        self.port = self._runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        """Close the port and every connection (in-flight handlers are cancelled)."""
        if self._runner is None:
            return
        await self.go_down()
        await self._runner.cleanup()
        self._runner = None

    async def go_down(self) -> None:
        """Die: close the listening socket (connections refused) and drop open connections."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for conn in self._runner.server.connections:
                conn.force_close()

    async def come_back(self) -> None:
        """Listen again on the same port after ``go_down``."""
        if self._site is None and self._runner is not None:
            self._site = web.TCPSite(self._runner, self.host, self.port)
            await self._site.start()

    @property
    def down(self) -> bool:
        return self._site is None

    async def __aenter__(self) -> FakeOllama:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------ scripting

    def set_models(self, models: Iterable[str | ModelSpec]) -> None:
        """Replace the local model list (``/api/tags``). Listed first = most recently modified."""
        now = time.time_ns()
        specs: dict[str, ModelSpec] = {}
        for i, item in enumerate(models):
            spec = item if isinstance(item, ModelSpec) else None
            key = model_key(spec.name if spec else str(item))
            spec = spec or self._models.get(key) or ModelSpec.from_name(str(item), now - i * 60_000_000_000)
            specs[key] = spec
        self._models = specs

    def set_loaded(self, loaded: Iterable[str]) -> None:
        """Replace the loaded list (``/api/ps``); each expires ``keep_alive_s`` from now."""
        now = time.time_ns()
        self._loaded = {}
        for name in loaded:
            key = model_key(name)
            spec = self._models.get(key) or ModelSpec.from_name(name)
            self._loaded[key] = _Loaded(spec, fmt.expiry_ns(now, self.keep_alive_s), self.keep_alive_s)

    @property
    def models(self) -> list[str]:
        return [s.name for s in sorted(self._models.values(), key=lambda s: -s.modified_ns)]

    @property
    def loaded(self) -> list[str]:
        return [entry.spec.name for entry in self._live_loaded()]

    def fail_next(self, status: int, error: str, count: int = 1) -> None:
        """The next ``count`` inference requests answer ``{"error": error}`` with ``status``."""
        self._failures.extend([(status, error)] * count)

    def fail_midstream(self, error: str = _STREAM_ERROR, after_tokens: int = 1, count: int = 1) -> None:
        """The next chat/generate requests send ``after_tokens`` tokens, then an error line and
        stop without a ``done`` line (Ollama's runner failure). Non-streaming ones get 500."""
        self._faults.extend([_Fault("error", after_tokens, error)] * count)

    def fail_pull(self, error: str = _PULL_ERROR, after_steps: int = 4, count: int = 1) -> None:
        """The next pulls send ``after_steps`` progress lines, then ``{"error": error}``, and the
        model does not appear (a download that broke). Non-streaming ones get 500."""
        self._pull_faults.extend([(after_steps, error)] * count)

    def cut_next(self, after_tokens: int = 1, count: int = 1) -> None:
        """The next chat/generate requests send ``after_tokens`` tokens, then the socket is closed."""
        self._faults.extend([_Fault("cut", after_tokens, "")] * count)

    def reset_next(self, count: int = 1) -> None:
        """The next chat/generate requests get their connection closed before any byte of the
        answer (not even a status line): a backend that crashed or reset the connection."""
        self._faults.extend([_Fault("reset", 0, "")] * count)

    def garble_next(self, kind: str = "stream", after_tokens: int = 1, count: int = 1) -> None:
        """The next chat/generate requests get an answer that is not Ollama's format:
        ``"stream"``: a stream (200, x-ndjson) of ``after_tokens`` good lines, then a broken JSON
        line and a line of binary junk, and it ends without a ``done`` line; ``"json"``: a 200
        ``application/json`` answer whose body is not JSON (streamed or not); ``"http"``: junk that
        is not HTTP at all, then the connection is closed."""
        if kind not in ("stream", "json", "http"):
            raise ValueError(f"unknown garbage kind {kind!r}")
        self._faults.extend([_Fault("garbage-" + kind, after_tokens, "")] * count)

    def hang(self) -> None:
        """Inference requests wait before answering (no headers) until ``release()``."""
        self._running.clear()

    def release(self) -> None:
        self._running.set()

    def reset_observations(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.active = self.max_active = 0
        self.active_by_model: dict[str, int] = {}
        self.max_active_by_model: dict[str, int] = {}
        self.disconnects = self.served = self.failed = 0
        self.loads: dict[str, int] = {}  # model key -> loads started (cold starts)
        self.load_log: list[tuple[str, float, float]] = []  # (model key, start, end) monotonic
        self.evictions = 0  # idle models unloaded to make room (max_loaded)
        self.rejected_hosts: list[str] = []

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Poll ``predicate()`` (e.g. ``lambda: fake.active == 2``) until true, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake {self.name}: condition not met within {timeout}s")
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------ plumbing

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self._root)
        router.add_get("/api/version", self._version)
        router.add_get("/api/tags", self._tags)
        router.add_get("/api/ps", self._ps, allow_head=False)
        router.add_post("/api/chat", self._chat)
        router.add_post("/api/generate", self._generate)
        router.add_post("/api/embed", self._embed)
        router.add_post("/api/embeddings", self._embeddings)
        router.add_post("/api/show", self._show)
        router.add_post("/api/pull", self._pull)
        router.add_post("/api/push", self._push)
        router.add_post("/api/create", self._create)
        router.add_post("/api/copy", self._copy)
        router.add_delete("/api/delete", self._delete)
        router.add_head("/api/blobs/{digest}", self._blob_head)
        router.add_post("/api/blobs/{digest}", self._blob_post)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """Record, apply Ollama's DNS-rebinding Host guard, map errors to Ollama's bodies."""
        raw = await request.read() if request.body_exists else b""
        parsed = None
        if raw and not request.path.startswith("/api/blobs/"):
            with contextlib.suppress(ValueError):
                parsed = json.loads(raw)
        self.requests.append(
            RecordedRequest(request.method, request.path, parsed, CIMultiDict(request.headers), time.monotonic(), raw)
        )
        if len(self.requests) > self.max_recorded:  # a long `make demo` is polled forever
            del self.requests[: len(self.requests) - self.max_recorded]
        log.info(
            "fake %s: %s %s %s",
            self.name,
            request.method,
            request.path,
            parsed.get("model", "") if isinstance(parsed, dict) else "",
        )
        host = request.headers.get("Host", "")
        if self._guard_host and not fmt.host_allowed(host, self.port, self.strict_host):
            self.rejected_hosts.append(host)
            return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response(status=204)
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPMethodNotAllowed:
            return _text(405, "405 method not allowed", "text/plain")
        except web.HTTPNotFound:
            return _text(404, "404 page not found", "text/plain")

    def _dump(self, value: object) -> bytes:
        """One JSON document as this fake writes it: Go's compact form, or spaced."""
        return json.dumps(value).encode() if self.spaced else go_json(value)

    def _json(self, value: object, status: int = 200,
              content_type: str = "application/json; charset=utf-8") -> web.Response:
        return web.Response(status=status, body=self._dump(value), headers={"Content-Type": content_type})

    @staticmethod
    async def _body(request: web.Request, struct: str) -> dict:
        """The request body as Go would bind it into ``api.<struct>``, or a 400."""
        try:
            return fmt.decode_request(await request.read(), struct)
        except fmt.BodyError as exc:
            raise ApiError(400, str(exc)) from None

    def _keep_alive(self, body: dict) -> float:
        try:
            return fmt.parse_keep_alive(body.get("keep_alive"), self.keep_alive_s)
        except fmt.BodyError as exc:
            raise ApiError(400, str(exc)) from None

    def _add_model(self, spec: ModelSpec) -> None:
        self._models[model_key(spec.name)] = spec

    def _spec(self, name: str, message: str | None = None) -> ModelSpec:
        """The local model called ``name`` (any spelling that resolves to it) or a 404."""
        spec = self._models.get(model_key(name)) if name else None
        if spec is None:
            raise ApiError(404, message or f"model '{name}' not found")
        return spec

    def _live_loaded(self) -> list[_Loaded]:
        """Loaded models, dropping those whose keep-alive has run out; newest expiry first."""
        now = time.time_ns()
        for key, entry in list(self._loaded.items()):
            if entry.refs == 0 and entry.expires_ns <= now:
                del self._loaded[key]
        return sorted(self._loaded.values(), key=lambda e: -e.expires_ns)

    # ------------------------------------------------------------ simple endpoints

    async def _root(self, request: web.Request) -> web.Response:
        return _text(200, "Ollama is running", "text/plain; charset=utf-8")

    async def _version(self, request: web.Request) -> web.Response:
        return self._json({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        specs = sorted(self._models.values(), key=lambda s: -s.modified_ns)
        return self._json({"models": [fmt.tags_entry(s) for s in specs]})

    async def _ps(self, request: web.Request) -> web.Response:
        return self._json({"models": [fmt.ps_entry(e.spec, e.expires_ns) for e in self._live_loaded()]})

    async def _show(self, request: web.Request) -> web.Response:
        body = await self._body(request, "ShowRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise ApiError(400, "model is required")
        return self._json(fmt.show_response(self._spec(name)))

    async def _copy(self, request: web.Request) -> web.Response:
        body = await self._body(request, "CopyRequest")
        source, destination = body.get("source") or "", body.get("destination") or ""
        for label, value in (("source", source), ("destination", destination)):
            if not value:
                raise ApiError(400, f"{label} {go_quote(value)} is invalid")
        spec = self._spec(source, f"model {go_quote(source)} not found")
        self._add_model(spec.renamed(destination))
        return web.Response(status=200)

    async def _delete(self, request: web.Request) -> web.Response:
        body = await self._body(request, "DeleteRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise ApiError(400, f"name {go_quote(name)} is invalid")
        self._spec(name)
        del self._models[model_key(name)]
        self._loaded.pop(model_key(name), None)
        return web.Response(status=200)

    async def _blob_head(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        if not _DIGEST.match(digest):
            return web.Response(status=400)
        return web.Response(status=200 if digest.replace("-", ":", 1) in self._blobs else 404)

    async def _blob_post(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        if not _DIGEST.match(digest):
            raise ApiError(400, "invalid digest format")
        digest = digest.replace("-", ":", 1)
        if digest in self._blobs:
            return web.Response(status=200)
        data = await request.read()
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ApiError(400, f"digest mismatch, expected {go_quote(digest)}, got {go_quote(actual)}")
        self._blobs[digest] = data
        return web.Response(status=201)

    # ------------------------------------------------------------ pull / push / create

    async def _progress(
        self, request: web.Request, body: dict, steps: list[dict], commit: Callable[[], None] | None = None
    ) -> web.StreamResponse:
        """Send progress lines (NDJSON) or, with ``stream:false``, only the last status.

        ``commit`` (the model appears) runs after ``writing manifest``, before ``success``.
        An ``{"error": ...}`` step ends the stream; without streaming it becomes a 500.
        """
        if body.get("stream") is False:
            for step in steps:
                if "error" in step:
                    raise ApiError(500, step["error"], content_type="application/json")
                await asyncio.sleep(self.token_delay)
            if commit:
                commit()
            return self._json(steps[-1], content_type="application/json")
        resp = web.StreamResponse(headers=_NDJSON)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for step in steps:
            if step.get("status") == "success" and commit:
                commit()
            await resp.write(self._dump(step) + b"\n")
            if "error" in step:
                break
            await asyncio.sleep(self.token_delay)
        await resp.write_eof()
        return resp

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, "PullRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise ApiError(400, "invalid model name")
        if self.pullable is not None and model_key(name) not in self.pullable:
            steps = [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
            return await self._progress(request, body, steps)
        spec = (self._models.get(model_key(name)) or ModelSpec.from_name(name)).renamed(name)
        if self._pull_faults:
            after, error = self._pull_faults.popleft()
            return await self._progress(request, body, [*fmt.pull_steps(spec)[:after], {"error": error}])
        return await self._progress(request, body, fmt.pull_steps(spec), lambda: self._add_model(spec))

    async def _push(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, "PushRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise ApiError(400, "model is required")
        spec = self._models.get(model_key(name))
        steps = fmt.push_steps(spec) if spec else [{"error": fmt.missing_manifest(name)}]
        return await self._progress(request, body, steps)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, "CreateRequest")
        name = body.get("model") or body.get("name") or ""
        if not name:
            raise ApiError(400, "invalid model name")
        source, files = body.get("from"), body.get("files")
        if not source and not files:
            raise ApiError(400, "neither 'from' or 'files' was specified")
        steps: list[dict] = [{"status": "gathering model components"}]
        if source:
            spec = self._spec(source).renamed(name)
            steps.append({"status": f"using existing layer sha256:{self._spec(source).digest}"})
        else:
            spec = ModelSpec.from_name(name)
            steps.append({"status": "parsing GGUF"})
            for digest in files.values():
                if not isinstance(digest, str) or not _DIGEST.match(digest):
                    raise ApiError(400, "invalid digest format")
                if digest.replace("-", ":", 1) not in self._blobs:
                    raise ApiError(400, f"blob {digest} not found")
                steps.append({"status": f"using existing layer {digest.replace('-', ':', 1)}"})
        if body.get("quantize"):
            spec = replace(spec, quantization_level=body["quantize"].upper())
            quantizing = f"quantizing F16 model to {spec.quantization_level}"
            steps.append({"status": quantizing, "digest": "0", "total": spec.size, "completed": spec.size})
        for key in ("template", "system", "license", "parameters", "messages"):
            if body.get(key):
                layer = fmt.sha256_hex(name + "/" + key + json.dumps(body[key], sort_keys=True))
                steps.append({"status": f"creating new layer sha256:{layer}"})
        steps += [{"status": "writing manifest"}, {"status": "success"}]
        return await self._progress(request, body, steps, lambda: self._add_model(spec))

    # ------------------------------------------------------------ inference

    async def _inference(
        self, request: web.Request, struct: str, serve: Callable[[web.Request, dict, _Ticket], Awaitable[Any]],
        body: dict | None = None,
    ) -> web.StreamResponse:
        """Everything inference endpoints share: counting, hang, fail_next, disconnects, release.
        ``body``: already decoded (the /v1 API's), instead of as the Go ``struct``."""
        body = await self._body(request, struct) if body is None else body
        ticket = _Ticket(model_key(body["model"]) if body.get("model") else "", time.perf_counter_ns())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        by_model = self.active_by_model[ticket.key] = self.active_by_model.get(ticket.key, 0) + 1
        self.max_active_by_model[ticket.key] = max(self.max_active_by_model.get(ticket.key, 0), by_model)
        try:
            await self._running.wait()
            if self._failures:
                raise ApiError(*self._failures.popleft())
            resp = await serve(request, body, ticket)
            ticket.response = resp
            if not resp.prepared and ticket.outcome != "cut":
                await resp.prepare(request)
                await resp.write_eof()
            if ticket.outcome == "served":
                self.served += 1
            else:
                self.failed += 1
            return resp
        except ApiError:
            self.failed += 1
            raise
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError is a subclass
            self.disconnects += 1
            return ticket.response if ticket.response is not None else web.Response()
        finally:
            self.active -= 1
            self.active_by_model[ticket.key] -= 1
            if ticket.held is not None:
                self._release(ticket.held)

    async def _load(self, spec: ModelSpec, keep_alive: float, ticket: _Ticket) -> None:
        """Make the model resident (waiting ``load_delay`` if it was not) and hold it."""
        key = model_key(spec.name)
        async with self._load_locks.setdefault(key, asyncio.Lock()):
            self._live_loaded()
            entry = self._loaded.get(key)
            if entry is None:
                async with self._scheduler:  # like Ollama's scheduler: one load at a time
                    await self._make_room()
                    self.loads[key] = self.loads.get(key, 0) + 1
                    started = time.monotonic()
                    await asyncio.sleep(self.load_delay)
                    self.load_log.append((key, started, time.monotonic()))
                    entry = self._loaded[key] = _Loaded(spec, 0, keep_alive)
            entry.refs += 1
            entry.keep_alive_s = keep_alive
            entry.expires_ns = fmt.expiry_ns(time.time_ns(), keep_alive)
            ticket.held = entry
        ticket.load_ns = max(1, time.perf_counter_ns() - ticket.start_ns)

    async def _make_room(self) -> None:
        """With ``max_loaded`` set, evict an idle model to load another, or wait until one is
        idle (Ollama's OLLAMA_MAX_LOADED_MODELS): models in use are never evicted."""
        while self.max_loaded and len(self._live_loaded()) >= self.max_loaded:
            idle = [k for k, e in self._loaded.items() if e.refs == 0]
            if idle:
                del self._loaded[min(idle, key=lambda k: self._loaded[k].expires_ns)]
                self.evictions += 1
                return
            await asyncio.sleep(0.005)

    def _release(self, entry: _Loaded) -> None:
        """Stop holding a model: its keep-alive starts now; 0 unloads it (if nobody else uses it)."""
        entry.refs -= 1
        if entry.refs > 0:
            return
        entry.expires_ns = fmt.expiry_ns(time.time_ns(), entry.keep_alive_s)
        key = model_key(entry.spec.name)
        if entry.keep_alive_s == 0 and self._loaded.get(key) is entry:
            del self._loaded[key]

    def _unload(self, spec: ModelSpec) -> None:
        entry = self._loaded.get(model_key(spec.name))
        if entry is not None:
            entry.keep_alive_s = 0
            entry.expires_ns = time.time_ns()
            if entry.refs == 0:
                del self._loaded[model_key(spec.name)]

    def _slot(self, key: str) -> contextlib.AbstractAsyncContextManager:
        """A per-model slot when ``num_parallel`` is set (Ollama's runner semaphore)."""
        if not self.num_parallel:
            return contextlib.nullcontext()
        return self._semaphores.setdefault(key, asyncio.Semaphore(self.num_parallel))

    @staticmethod
    def _check_think(body: dict, spec: ModelSpec, model: str) -> None:
        if body.get("think") not in (None, False) and "thinking" not in spec.capabilities:
            raise ApiError(400, f"{go_quote(model)} does not support thinking")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, "ChatRequest", self._serve_chat)

    async def _serve_chat(self, request: web.Request, body: dict, ticket: _Ticket) -> web.StreamResponse:
        keep_alive = self._keep_alive(body)
        model = body.get("model") or ""
        if not model:
            raise ApiError(400, "model is required")
        spec = self._spec(model)
        messages = body.get("messages") or []
        if not messages and keep_alive == 0:
            self._unload(spec)
            return self._json(fmt.load_answer(model, "unload", chat=True))
        if "completion" not in spec.capabilities:
            raise ApiError(400, f"{go_quote(model)} does not support chat")
        if body.get("tools") and "tools" not in spec.capabilities:
            raise ApiError(400, f"{fmt.full_name(model)} does not support tools")
        self._check_think(body, spec, model)
        await self._load(spec, keep_alive, ticket)
        if not messages:
            return self._json(fmt.load_answer(model, "load", chat=True))
        words = sum(fmt.count_words(m.get("content")) for m in messages if isinstance(m, dict))
        return await self._complete(request, body, ticket, words, chat=True)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, "GenerateRequest", self._serve_generate)

    async def _serve_generate(self, request: web.Request, body: dict, ticket: _Ticket) -> web.StreamResponse:
        keep_alive = self._keep_alive(body)
        model = body.get("model") or ""
        spec = self._spec(model)
        prompt = body.get("prompt") or ""
        if not prompt and keep_alive == 0:
            self._unload(spec)
            return self._json(fmt.load_answer(model, "unload", chat=False))
        if body.get("raw") and (body.get("template") or body.get("system") or body.get("context")):
            raise ApiError(400, "raw mode does not support template, system, or context")
        if "completion" not in spec.capabilities:
            raise ApiError(400, f"{go_quote(model)} does not support generate")
        self._check_think(body, spec, model)
        await self._load(spec, keep_alive, ticket)
        if not prompt:
            return self._json(fmt.load_answer(model, "load", chat=False))
        words = fmt.count_words(prompt) + fmt.count_words(body.get("system"))
        return await self._complete(request, body, ticket, words, chat=False)

    async def _complete(
        self, request: web.Request, body: dict, ticket: _Ticket, prompt_words: int, chat: bool
    ) -> web.StreamResponse:
        """Generate the reply token by token (``token_delay`` each), streamed or in one answer:
        thinking first (``think``), then the text, then tool calls (see ``answering``)."""
        model = body["model"]
        options = body.get("options") or {}
        limit = options.get("num_predict")
        limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0 else None
        answer = ollama_answer(body, self.reply.format(name=self.name, model=model), self.tool_call, chat=chat)
        tokens = fmt.n_tokens(fmt.word_tokens(answer.text), limit)
        thoughts = fmt.word_tokens(answer.thinking)
        done_reason = "stop" if limit is None else "length"
        fault = self._faults.popleft() if self._faults else None
        stream = body.get("stream") is not False
        if fault and fault.kind in ("reset", "garbage-json", "garbage-http"):
            return await self._apply_fault(request, ticket, fault)

        def final(piece: str, thinking: str, calls: list, prompt_ns: int, eval_start: int) -> dict:
            out = {**_line(model, piece, thinking, calls, True, chat), "done_reason": done_reason}
            if not chat and not body.get("raw"):
                out["context"] = fmt.token_ids(fmt.word_tokens(body.get("prompt") or "") + tokens)
            now = time.perf_counter_ns()
            total, eval_ns = now - ticket.start_ns, max(1, now - eval_start)
            generated = len(tokens) + len(thoughts) + len(answer.tool_calls)
            return out | fmt.metrics(total, ticket.load_ns, prompt_words, prompt_ns, generated, eval_ns)

        async with self._slot(ticket.key):
            prompt_start = time.perf_counter_ns()
            await asyncio.sleep(0)  # "prefill"
            eval_start = time.perf_counter_ns()
            prompt_ns = max(1000, eval_start - prompt_start)
            if not stream:
                for i in range(len(tokens) + 1):
                    if fault and i == min(fault.after, len(tokens)):
                        return await self._apply_fault(request, ticket, fault)
                    if i < len(tokens):
                        await asyncio.sleep(self.token_delay)
                whole = final("".join(tokens), answer.thinking, answer.tool_calls, prompt_ns, eval_start)
                return self._json(whole)
            resp = ticket.response = web.StreamResponse(headers=_NDJSON)
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for piece in thoughts:
                await asyncio.sleep(self.token_delay)
                await resp.write(self._dump(_line(model, "", piece, [], False, chat)) + b"\n")
            for i in range(len(tokens) + 1):
                if fault and i == min(fault.after, len(tokens)):
                    return await self._apply_fault(request, ticket, fault, resp)
                if i == len(tokens):
                    break
                await asyncio.sleep(self.token_delay)
                await resp.write(self._dump(fmt.chunk(model, tokens[i], False, chat)) + b"\n")
                if i == 0 and self.gate is not None:
                    await self.gate.wait()
            if answer.tool_calls:
                await resp.write(self._dump(_line(model, "", "", answer.tool_calls, False, chat)) + b"\n")
            await resp.write(self._dump(final("", "", [], prompt_ns, eval_start)) + b"\n")
            await resp.write_eof()
            return resp

    async def _apply_fault(
        self, request: web.Request, ticket: _Ticket, fault: _Fault, resp: web.StreamResponse | None = None
    ) -> web.StreamResponse:
        """Scripted runner failure: an error line (a 500 before any output), or a cut socket;
        or an answer in no known format (``garble_next``)."""
        if fault.kind in ("garbage-json", "garbage-stream"):
            ticket.outcome = "failed"
            if resp is None:  # one 200 answer that is not JSON
                body = GARBLED_BODY if fault.kind == "garbage-json" else GARBLED_LINES
                return web.Response(status=200, body=body, headers={"Content-Type": "application/json"})
            await resp.write(GARBLED_LINES)
            await resp.write_eof()
            return resp
        if fault.kind == "garbage-http" and request.transport is not None:
            request.transport.write(NOT_HTTP)
        if fault.kind in ("cut", "reset", "garbage-http"):
            ticket.outcome = "cut"
            if request.transport is not None:
                request.transport.close()
            return resp if resp is not None else web.Response()
        ticket.outcome = "failed"
        if resp is None:
            raise ApiError(500, fault.error)
        # Ollama's failure after output started: one error line, and no done line.
        await resp.write(self._dump({"error": fault.error}) + b"\n")
        await resp.write_eof()
        return resp

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, "EmbedRequest", self._serve_embed)

    async def _serve_embed(self, request: web.Request, body: dict, ticket: _Ticket) -> web.StreamResponse:
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            inputs = [raw_input] if raw_input else []
        elif isinstance(raw_input, list) and all(isinstance(v, str) for v in raw_input):
            inputs = raw_input
        elif raw_input is None:
            inputs = []
        else:
            raise ApiError(400, "invalid input type")
        keep_alive = self._keep_alive(body)
        model = body.get("model") or ""
        if not model:
            raise ApiError(400, "model is required")
        spec = self._spec(model)
        await self._load(spec, keep_alive, ticket)
        if not inputs:
            return self._json({"model": model, "embeddings": []})
        async with self._slot(ticket.key):
            dims = body.get("dimensions") if isinstance(body.get("dimensions"), int) else None
            vectors = [fmt.normalized_vector(text, self.embedding_dim, dims) for text in inputs]
            total = time.perf_counter_ns() - ticket.start_ns
            counted = sum(fmt.count_words(t) for t in inputs)
            return self._json({"model": model, "embeddings": vectors} | fmt.metrics(total, ticket.load_ns, counted))

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._inference(request, "EmbeddingRequest", self._serve_embeddings)

    async def _serve_embeddings(self, request: web.Request, body: dict, ticket: _Ticket) -> web.StreamResponse:
        keep_alive = self._keep_alive(body)
        model = body.get("model") or ""
        if not model:
            raise ApiError(400, "model is required")
        spec = self._spec(model, f"model {go_quote(model)} not found, try pulling it first")
        await self._load(spec, keep_alive, ticket)
        prompt = body.get("prompt") or ""
        if not prompt:
            return self._json({"embedding": []})
        async with self._slot(ticket.key):
            return self._json({"embedding": fmt.raw_vector(prompt, self.embedding_dim)})


__all__ = ["FOREVER", "ApiError", "FakeOllama", "ModelSpec", "RecordedRequest"]
