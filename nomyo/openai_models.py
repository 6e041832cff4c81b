"""What OpenAI-compatible backends tell about their models, in the shapes Ollama clients read.

Ollama tools judge a model by `/api/show` (`capabilities`, `details`, `model_info`), `/api/ps`
(what is loaded, its context length) and `/api/tags` (`size`). A vLLM or llama.cpp server says
much of that too, in its own words; this module gathers it and writes it in Ollama's:

- the model listing (`/v1/models`): llama-server's `meta` (parameters, trained context,
  embedding length, file size) and `architecture.input_modalities` (`image`: vision); in router
  mode each model's `status` (only `loaded` ones are loaded); vLLM's `max_model_len`;
- llama-server's `/props` (at the server's root, asked once per loaded model and remembered;
  in router mode with `autoload=false`, so asking never loads a model): the context it runs
  with (`n_ctx`), whether its chat template takes tools, and its modalities;
- `embedding` for a model that answered an embeddings request through the router, or that
  its listing declares one (`type`/`capabilities`), or that `model_capabilities` names.

The poller owns one `OpenAIFacts` (it outlives reloads, as the breakers do) and calls
`refresh` from its poll of such a backend; the views call the `ollama_*` functions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from .fleet import Backend
from .names import normalize_model

log = logging.getLogger("nomyo.poller")
PROPS_RETRY = 60.0  # seconds before a failed /props is asked again
# What Ollama's /api/ps shows for a model kept loaded forever (keep_alive < 0): now + Go's
# largest duration, some 292 years on.
FOREVER_AT = "2318-01-01T00:00:00Z"
EMBEDDING_PATHS = frozenset({"/api/embed", "/api/embeddings", "/v1/embeddings"})
COMPLETION_PATHS = frozenset({"/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"})

GetJson = Callable[[str], Awaitable[Any]]


def root_path(path: str) -> str:
    """`path` at the server's root, relative to an endpoint configured by its `/v1` base: the
    `..` is resolved when the URL is built (`http://h:8080/v1/../props` is `/props`), and a
    base without `/v1` stays at its root."""

    return "/.." + path


def status_of(entry: dict) -> str | None:
    """llama-server router mode's `status.value` (`loaded`, `loading`, `unloaded`, ...)."""

    status = entry.get("status")
    value = status.get("value") if isinstance(status, dict) else None
    return value if isinstance(value, str) else None


def is_loaded(entry: dict) -> bool:
    """A server that lists no status serves all it lists (single-model llama-server, vLLM)."""

    value = status_of(entry)
    return value is None or value == "loaded"


def loaded_models(entries: Iterable[dict]) -> set[str]:
    return {normalize_model(e["id"]) for e in entries if is_loaded(e)}


def unload_call(backend: Backend, key: str) -> tuple[str, dict] | None:
    """(path, body) that unloads `key` from a llama-server in router mode; None where the
    server cannot unload it (one model for its whole life, or not loaded)."""

    if backend.config.is_ollama:
        return None
    for entry in backend.status.tags:
        if normalize_model(entry["id"]) == key and status_of(entry) == "loaded":
            return root_path("/models/unload"), {"model": entry["id"]}
    return None


class OpenAIFacts:
    """What the poller learned about OpenAI-compatible backends' models beyond their listing:
    `/props` answers, and which models answered embeddings. Keyed by backend name and model."""

    def __init__(self) -> None:
        self._props: dict[tuple[str, str], dict] = {}
        self._asked: dict[tuple[str, str], float] = {}
        self._answered: set[tuple[str, str, str]] = set()  # (backend, model, "embedding"/"completion")

    async def refresh(self, backend: Backend, entries: tuple[dict, ...], get_json: GetJson, timeout: float) -> None:
        """Ask llama-server's `/props` for loaded models not asked yet (within `timeout`: a slow
        answer costs the facts, never the poll)."""

        if backend.config.type != "llama-server":
            return
        routed = any(status_of(e) is not None for e in entries)
        now = time.monotonic()
        wanted = []
        for entry in entries:
            key = (backend.name, entry["id"])
            if not is_loaded(entry):
                self._props.pop(key, None)  # loaded again later, maybe with other arguments
            elif key not in self._props and now - self._asked.get(key, -PROPS_RETRY) >= PROPS_RETRY:
                self._asked[key] = now
                query = f"?model={quote(entry['id'], safe='')}&autoload=false" if routed else ""
                wanted.append((key, root_path("/props") + query))
        if wanted:
            await asyncio.gather(*(self._ask(key, path, get_json, timeout) for key, path in wanted))

    async def _ask(self, key: tuple[str, str], path: str, get_json: GetJson, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                props = await get_json(path)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.debug("no /props from %s for %s: %s", key[0], key[1], exc)
            return
        if isinstance(props, dict) and props.get("role") != "router":  # router mode's own, not the model's
            self._props[key] = props

    def props(self, backend: Backend, ident: str) -> dict:
        return self._props.get((backend.name, ident), {})

    def saw(self, backend: Backend, key: str, capability: str) -> None:
        self._answered.add((backend.name, key, capability))

    def answered(self, backend: Backend, key: str, capability: str) -> bool:
        return (backend.name, key, capability) in self._answered


def note_answer(facts: OpenAIFacts, backend: Backend, key: str, path: str, outcome: str | None) -> None:
    """After a routed request: an embeddings answer from an OpenAI-compatible backend shows its
    model embeds (no such server says so in its listing); a completion, that it completes."""

    if outcome != "ok" or backend.config.is_ollama:
        return
    if path in EMBEDDING_PATHS:
        facts.saw(backend, key, "embedding")
    elif path in COMPLETION_PATHS:
        facts.saw(backend, key, "completion")


# -- Ollama's shapes ------------------------------------------------------------------------------


class Described:
    """One model of one OpenAI-compatible backend, read from everything known about it."""

    def __init__(self, backend: Backend, entry: dict, facts: OpenAIFacts | None,
                 configured: Mapping[str, tuple[str, ...]] | None = None):
        self.entry = entry
        self.ident = str(entry.get("id"))
        self.key = normalize_model(self.ident)
        self.meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        self.props = facts.props(backend, self.ident) if facts is not None else {}
        self.embeds = facts is not None and facts.answered(backend, self.key, "embedding")
        self.completes = facts is not None and facts.answered(backend, self.key, "completion")
        self.configured = (configured or {}).get(self.key)
        self.llama = backend.config.type == "llama-server"

    @property
    def context_length(self) -> int | None:
        settings = self.props.get("default_generation_settings")
        running = settings.get("n_ctx") if isinstance(settings, dict) else None
        return _int(running) or _int(self.meta.get("n_ctx")) or _int(self.meta.get("n_ctx_train")) \
            or _int(self.entry.get("max_model_len"))

    @property
    def vision(self) -> bool:
        architecture = self.entry.get("architecture")
        inputs = architecture.get("input_modalities") if isinstance(architecture, dict) else None
        modalities = self.props.get("modalities")
        return (isinstance(inputs, list) and "image" in inputs) or \
            (isinstance(modalities, dict) and modalities.get("vision") is True)

    def capabilities(self) -> list[str]:
        if self.configured:
            return list(self.configured)
        declared = self.entry.get("capabilities") if isinstance(self.entry.get("capabilities"), list) else []
        embeds = self.embeds or self.entry.get("type") in ("embedding", "embeddings") or "embedding" in declared
        if embeds and not self.completes:
            return ["embedding"]
        found = ["completion", "embedding"] if embeds else ["completion"]
        caps = self.props.get("chat_template_caps")
        if "tools" in declared or (isinstance(caps, dict) and caps.get("supports_tools") is True):
            found.append("tools")
        if self.vision or "vision" in declared:
            found.append("vision")
        return found

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"parent_model": "", "format": "gguf" if self.llama else "", "family": "",
                                   "families": None, "parameter_size": _parameter_size(self.meta.get("n_params")),
                                   "quantization_level": ""}
        if self.context_length:
            details["context_length"] = self.context_length
        if _int(self.meta.get("n_embd")):
            details["embedding_length"] = self.meta["n_embd"]
        return details

    def model_info(self) -> dict[str, Any]:
        """GGUF-style keys; the architecture is not told by these servers, so it is `unknown`
        (clients look up `<general.architecture>.context_length`)."""

        info: dict[str, Any] = {"general.architecture": "unknown", "general.basename": self.ident}
        pairs = (("general.parameter_count", self.meta.get("n_params")),
                 ("unknown.context_length", self.meta.get("n_ctx_train") or self.context_length),
                 ("unknown.embedding_length", self.meta.get("n_embd")))
        info |= {name: value for name, value in pairs if _int(value)}
        return info

    @property
    def size(self) -> int:
        return _int(self.meta.get("size")) or 0

    def modified_at(self) -> str:
        created = self.entry.get("created") if isinstance(self.entry.get("created"), int) else int(time.time())
        return datetime.fromtimestamp(created, UTC).isoformat()

    def digest(self) -> str:
        return hashlib.sha256(self.ident.encode()).hexdigest()


def ollama_tag(described: Described) -> dict:
    """An /api/tags entry."""

    return {"name": described.ident, "model": described.ident, "modified_at": described.modified_at(),
            "size": described.size, "digest": described.digest(), "details": described.details()}


def ollama_show(described: Described) -> dict:
    """/api/show: with the `model_info` key ollama-python requires."""

    return {"modelfile": "", "parameters": "", "template": str(described.props.get("chat_template") or ""),
            "details": described.details(), "model_info": described.model_info(),
            "capabilities": described.capabilities(), "modified_at": described.modified_at()}


def ollama_ps(described: Described) -> dict:
    """An /api/ps entry: these servers keep a loaded model until told otherwise."""

    return {"name": described.ident, "model": described.ident, "size": described.size,
            "digest": described.digest(), "details": described.details(), "expires_at": FOREVER_AT,
            "size_vram": described.size, "context_length": described.context_length or 0}


def lists_loaded(backend: Backend) -> bool:
    """Whether a backend's loaded models belong in /api/ps: llama-server's, and vLLM's (its
    listing has `max_model_len`); not a hosted API's catalogue."""

    if backend.config.is_ollama:
        return False
    return backend.config.type == "llama-server" or any("max_model_len" in e for e in backend.status.tags)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _parameter_size(count: Any) -> str:
    if not _int(count):
        return ""
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.1f}M"
