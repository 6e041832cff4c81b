"""One request as the cache sees it: may it be answered from the cache or stored, and its keys.

The exact key covers everything that can change the answer (see `canonical`): the route (and so
its dialect), the normalised model, the whole body but its delivery fields, and the caller's
isolation scope. The context key is the same without the conversation's text: semantic matches
are only looked for among entries that share it (scope, model, system prompt, tools, format,
options), so a paraphrase can never cross a tenant, a system prompt or a sampling setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import bad_request
from ..names import normalize_model
from .canonical import body_form, canonical, hash_of
from .config import CacheConfig
from .stores.base import tag
from .texts import semantic_texts, word_order

ROUTES = {
    "/api/chat": ("ollama", "chat"), "/api/generate": ("ollama", "generate"),
    "/api/embed": ("ollama", "embed"), "/api/embeddings": ("ollama", "embed"),
    "/v1/chat/completions": ("openai", "chat"), "/v1/completions": ("openai", "generate"),
    "/v1/embeddings": ("openai", "embed"),
}
HEADER = "X-Nomyo-Cache"
TEXT_FIELDS = {"chat": ("messages",), "generate": ("prompt",), "embed": ("input", "prompt")}


@dataclass(slots=True)
class CacheRequest:
    """What the cache decided for one request. `lookup`/`store` False with a `reason`: bypass."""

    route: str
    dialect: str  # "ollama" | "openai"
    kind: str  # "chat" | "generate" | "embed"
    model: str  # as the client spelled it (replays echo it)
    model_key: str  # normalised
    scope: str
    stream: bool
    include_usage: bool = False
    lookup: bool = False
    store: bool = False
    reason: str = ""
    key: str = ""
    context: str = ""
    texts: tuple[str, str] | None = None  # (history, last user message) when semantic may apply
    words: str = ""  # the last message's word_order: see texts.word_order
    vector: Any = None  # set by the cache once embedded, reused when the answer is stored
    extra: dict = field(default_factory=dict)

    @property
    def bypass(self) -> bool:
        return not (self.lookup or self.store)

    @property
    def status(self) -> str:
        """`X-Nomyo-Cache` for a request that was not answered from the cache."""
        return "bypass" if self.bypass else "miss"


def strip_nomyo(payload: dict[str, Any]) -> dict[str, Any]:
    """The body without the router's own `nomyo` field (a backend must never see it)."""

    return {k: v for k, v in payload.items() if k != "nomyo"} if "nomyo" in payload else payload


def strip_nomyo_raw(raw: bytes, payload: dict[str, Any]) -> bytes:
    """The bytes to send upstream: the client's own, unless they carry `nomyo` (then re-encoded)."""

    return orjson.dumps(strip_nomyo(payload)) if "nomyo" in payload else raw


def header_directives(headers: Mapping[str, str] | None) -> set[str]:
    """`X-Nomyo-Cache: no-cache, no-store` -> {"no-cache", "no-store"} (unknown words ignored)."""

    value = (headers or {}).get(HEADER, "")
    return {word.strip().lower() for word in value.split(",")} & {"no-cache", "no-store"}


def body_switch(payload: dict[str, Any]) -> bool | None:
    """`"nomyo": {"cache": true|false}`; None when the request does not say. A 400 if malformed."""

    nomyo = payload.get("nomyo")
    if nomyo is None:
        return None
    if not isinstance(nomyo, dict):
        raise bad_request("invalid type for 'nomyo': expected an object", param="nomyo")
    value = nomyo.get("cache")
    if value is not None and not isinstance(value, bool):
        raise bad_request("invalid type for 'nomyo.cache': expected a boolean", param="nomyo.cache")
    return value


def _stream_flag(dialect: str, kind: str, payload: dict[str, Any]) -> bool:
    if kind == "embed":
        return False
    value = payload.get("stream")
    return (dialect == "ollama") if value is None else bool(value)


def _sampling(dialect: str, payload: dict[str, Any]) -> tuple[Any, Any]:
    source = payload.get("options") if dialect == "ollama" else payload
    source = source if isinstance(source, dict) else {}
    return source.get("temperature"), source.get("seed")


def _no_text(kind: str, route: str, payload: dict[str, Any]) -> bool:
    """Load/unload requests (and embeddings of nothing): no answer worth keeping."""

    if kind == "chat":
        return not payload.get("messages")
    if kind == "generate":
        return not payload.get("prompt") and not payload.get("suffix")
    return not payload.get("prompt" if route == "/api/embeddings" else "input")


def refusal(config: CacheConfig, req: CacheRequest, payload: dict[str, Any]) -> str:
    """Why this request is not cached at all ("" when it may be)."""

    switch = body_switch(payload)
    if not config.enabled:
        return "disabled"
    if switch is False or (config.default == "opt-in" and switch is not True):
        return "not asked" if switch is None else "declined by the request"
    if req.model_key.startswith("moe-"):
        return "moe"
    if _no_text(req.kind, req.route, payload):
        return "load or unload"
    temperature, seed = _sampling(req.dialect, payload)
    if _positive(temperature) and seed is None and not config.nondeterministic:
        return "nondeterministic"
    choices = payload.get("n")
    if req.dialect == "openai" and _positive(choices) and choices != 1:
        return "several choices"
    return ""


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def build_request(config: CacheConfig, route: str, payload: dict[str, Any], scope: str,
                  headers: Mapping[str, str] | None = None) -> CacheRequest:
    """The cache's decision for one request (see the module's docstring). Raises a 400
    RouterError for a malformed `nomyo` field; every other body problem is the handler's."""

    dialect, kind = ROUTES.get(route, ("", ""))
    model = payload.get("model") or payload.get("name") or ""
    model = model if isinstance(model, str) else ""
    req = CacheRequest(route, dialect, kind, model, normalize_model(model), scope,
                       _stream_flag(dialect, kind, payload) if kind else False)
    options = payload.get("stream_options")
    req.include_usage = isinstance(options, dict) and options.get("include_usage") is True
    if not kind:
        req.reason = "route"
        return req
    req.reason = refusal(config, req, payload)
    if req.reason:
        return req
    directives = header_directives(headers)
    req.lookup, req.store = "no-cache" not in directives, "no-store" not in directives
    if req.bypass:
        req.reason = "declined by the request"
        return req
    req.key = exact_key(req, payload)
    if kind != "embed" and config.semantic:
        req.texts = semantic_texts(kind, payload)
        if req.texts is not None:
            req.context = context_key(req, payload)
            req.words = word_order(req.texts[1])
    return req


def exact_key(req: CacheRequest, payload: dict[str, Any]) -> str:
    """`<scope tag>:<model tag>:<hash>`: the tags let a store drop a model's or a scope's entries
    by key name alone (Redis); the hash covers everything, the scope and model included."""

    digest = hash_of("exact", req.route, req.model_key, req.scope, body_form(payload))
    return f"{tag(req.scope)}:{tag(req.model_key)}:{digest}"


def context_key(req: CacheRequest, payload: dict[str, Any]) -> str:
    """The exact key without the last user message: what a semantic match must share.

    The conversation before the last message is part of it, exactly: with e5-small and
    cache_history_weight 0.3, "Now make it shorter." after a poem and after an explanation of
    TCP still score 0.989 — the collision of follow-ups the exact key exists to prevent."""

    rest = body_form(payload, drop=frozenset(TEXT_FIELDS[req.kind]))
    earlier = canonical(payload.get("messages", [])[:-1]) if req.kind == "chat" else []
    return hash_of("context", req.route, req.model_key, req.scope, rest, earlier)
