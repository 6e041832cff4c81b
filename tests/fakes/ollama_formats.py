"""Pure helpers that build Ollama wire data exactly as the Go server does.

Nothing here does I/O or keeps state, so each rule can be read (and unit-tested) on its own.
The rules come from /work/shared/reference/ollama-api.md: field order of the Go structs,
``omitempty`` metrics, RFC3339Nano timestamps, Go's JSON error texts, ``x`` == ``x:latest``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import socket
import struct
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import orjson

FOREVER = math.inf
"""A keep-alive that never expires (negative ``keep_alive`` in a request)."""

_MAX_GO_DURATION_NS = 2**63 - 1
_QUANT_BYTES_PER_PARAM = 0.57  # ~Q4_K_M, so sizes look like real downloads

# ---------------------------------------------------------------- JSON


def go_json(value: object) -> bytes:
    """Compact JSON like Go's ``json.Marshal``: dict order kept, HTML characters escaped.

    Go escapes ``<``, ``>``, ``&`` and U+2028/U+2029 inside strings; orjson does not. Those
    bytes can only occur inside strings, so a byte replacement is exact.
    """
    data = orjson.dumps(value)
    for raw, escaped in (
        (b"<", b"\\u003c"),
        (b">", b"\\u003e"),
        (b"&", b"\\u0026"),
        ("\u2028".encode(), b"\\u2028"),
        ("\u2029".encode(), b"\\u2029"),
    ):
        data = data.replace(raw, escaped)
    return data


def go_kind(value: object) -> str:
    """The JSON kind word Go uses in ``cannot unmarshal <kind> into ...`` errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


_PY_TO_GO_SYNTAX = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
}


def _quote_char(char: str) -> str:
    """Go's ``quoteChar`` for syntax errors: ``'x'``, ``'\\''``, ``'"'``."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return "'" + json.dumps(char)[1:-1] + "'"


class BodyError(ValueError):
    """A request body Go's ``ShouldBindJSON`` would reject; ``str()`` is Go's message."""


def decode_body(raw: bytes, struct_name: str) -> dict:
    """Decode a request body the way gin's ``ShouldBindJSON`` does.

    Whitespace only -> ``missing request body`` (io.EOF); a syntax error -> Go's
    ``invalid character ...``/``unexpected EOF``; a non-object -> ``cannot unmarshal``;
    ``null`` -> an empty request. Like ``json.Decoder`` only the first value is read.
    """
    text = raw.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip())
    if start == len(text):
        raise BodyError("missing request body")
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise BodyError("unexpected EOF") from None
        context = _PY_TO_GO_SYNTAX.get(exc.msg, "looking for beginning of value")
        raise BodyError(f"invalid character {_quote_char(text[exc.pos])} {context}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BodyError(f"json: cannot unmarshal {go_kind(value)} into Go value of type api.{struct_name}")
    return value


REQUEST_FIELDS: dict[str, dict[str, str]] = {
    # JSON name -> Go type, for the fields whose type the fake checks (others are ignored).
    "ChatRequest": {"model": "string", "messages": "[]api.Message", "stream": "bool", "tools": "api.Tools",
                    "options": "map[string]interface {}"},
    "GenerateRequest": {"model": "string", "prompt": "string", "system": "string", "template": "string",
                        "context": "[]int", "raw": "bool", "stream": "bool", "options": "map[string]interface {}"},
    "EmbedRequest": {"model": "string", "options": "map[string]interface {}"},
    "EmbeddingRequest": {"model": "string", "prompt": "string", "options": "map[string]interface {}"},
    "ShowRequest": {"model": "string", "name": "string"},
    "PullRequest": {"model": "string", "name": "string", "stream": "bool"},
    "PushRequest": {"model": "string", "name": "string", "stream": "bool"},
    "DeleteRequest": {"model": "string", "name": "string"},
    "CopyRequest": {"source": "string", "destination": "string"},
    "CreateRequest": {"model": "string", "name": "string", "stream": "bool", "from": "string",
                      "files": "map[string]string", "quantize": "string"},
}  # fmt: skip


def _python_type(go_type: str) -> type:
    if go_type.startswith("map"):
        return dict
    return {"string": str, "bool": bool}.get(go_type, list)


def decode_request(raw: bytes, struct_name: str) -> dict:
    """``decode_body`` plus Go's case-insensitive key matching and type checks of known fields."""
    body = decode_body(raw, struct_name)
    fields = REQUEST_FIELDS[struct_name]
    out = dict(body)
    for key, value in body.items():
        if key.lower() in fields and key.lower() not in body:
            out[key.lower()] = value
    for name, go_type in fields.items():
        value = out.get(name)
        if value is not None and not isinstance(value, _python_type(go_type)):
            raise BodyError(
                f"json: cannot unmarshal {go_kind(value)} into Go struct field {struct_name}.{name} of type {go_type}"
            )
    return out


def go_quote(text: str) -> str:
    """Go's ``%q`` (as in ``model "x" not found``)."""
    return json.dumps(text, ensure_ascii=False)


_GO_PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]
"""Go's ``netip.Addr.IsPrivate`` (narrower than Python's ``is_private``)."""


def host_allowed(header: str, own_port: int, strict: bool = False) -> bool:
    """Ollama's ``allowedHostsMiddleware`` for a loopback listener: is this ``Host`` local-looking?

    Loopback/private/unspecified IPs, ``localhost``, ``*.localhost``, ``*.local``, ``*.internal``
    and the machine's hostname pass. ``strict`` (not Ollama) only accepts this server's own
    ``127.0.0.1|localhost|[::1]:<own_port>``, which catches a router forwarding its own Host.
    """
    if header.startswith("["):
        host, _, rest = header[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif header.count(":") == 1:
        host, port = header.split(":")
    else:
        host, port = header, ""
    host = host.lower()
    if strict:
        return host in ("127.0.0.1", "localhost", "::1") and port == str(own_port)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        local_names = ("", "localhost", socket.gethostname().lower())
        return host in local_names or host.endswith((".localhost", ".local", ".internal"))
    return ip.is_loopback or ip.is_unspecified or any(ip in net for net in _GO_PRIVATE)


# ---------------------------------------------------------------- time


def rfc3339nano_utc(ns: int | None = None) -> str:
    """``created_at``: Go ``time.Time`` in UTC, nanoseconds with trailing zeros trimmed."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def rfc3339nano_local(ns: int) -> str:
    """``modified_at``/``expires_at``: local time with its offset (``Z`` when the offset is 0)."""
    secs, frac = divmod(ns, 1_000_000_000)
    try:
        moment = datetime.fromtimestamp(secs).astimezone()
    except (OverflowError, OSError, ValueError):  # far future ("forever") on odd platforms
        moment = datetime.fromtimestamp(0, UTC) + timedelta(seconds=secs)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    if digits:
        stamp += "." + digits
    offset = moment.utcoffset() or timedelta(0)
    if not offset:
        return stamp + "Z"
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{stamp}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def expiry_ns(now_ns: int, keep_alive_s: float) -> int:
    """Wall-clock expiry in ns; "forever" is now + max Go duration, as Ollama's ps shows it."""
    if keep_alive_s == FOREVER:
        return now_ns + _MAX_GO_DURATION_NS
    return now_ns + int(keep_alive_s * 1e9)


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object, default_s: float) -> float:
    """``api.Duration``: number = seconds, string = Go duration, negative = forever.

    Raises BodyError with Go's ``time: ...`` text for strings ParseDuration rejects.
    Other JSON types leave the default (Go ignores them).
    """
    if value is None or isinstance(value, bool):
        return default_s
    if isinstance(value, (int, float)):
        return FOREVER if value < 0 else float(value)
    if not isinstance(value, str):
        return default_s
    text = value
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        raise BodyError(f"time: invalid duration {json.dumps(value)}")
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            if re.fullmatch(r"[\d.]+", body[pos:]):
                raise BodyError(f"time: missing unit in duration {json.dumps(value)}")
            raise BodyError(f"time: invalid duration {json.dumps(value)}")
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    return FOREVER if sign < 0 else total


# ---------------------------------------------------------------- models


def model_key(name: str) -> str:
    """Canonical lookup key: lower case, default registry/namespace dropped, tag ``latest`` added.

    ``Llama3``, ``llama3:latest`` and ``registry.ollama.ai/library/llama3`` share one key.
    """
    n = name.strip().lower().split("@", 1)[0]
    parts = n.split("/")
    if len(parts) == 3 and parts[0] == "registry.ollama.ai":
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == "library":
        parts = parts[1:]
    if ":" not in parts[-1]:
        parts[-1] += ":latest"
    return "/".join(parts)


def display_name(name: str) -> str:
    """The name as ``/api/tags`` lists it: as given, with ``:latest`` when no tag was given."""
    n = name.strip()
    return n if ":" in n.rsplit("/", 1)[-1] else n + ":latest"


def full_name(name: str) -> str:
    """``registry.ollama.ai/library/x:tag`` as used in capability errors."""
    key = model_key(name)
    if key.count("/") == 0:
        return f"registry.ollama.ai/library/{key}"
    if key.count("/") == 1:
        return f"registry.ollama.ai/{key}"
    return key


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """What the fake knows about one local model; everything else is derived from it."""

    name: str
    family: str
    parameter_size: str
    parameter_count: int
    size: int
    digest: str
    capabilities: tuple[str, ...]
    quantization_level: str = "Q4_K_M"
    context_length: int = 4096
    embedding_length: int = 4096
    modified_ns: int = field(default_factory=time.time_ns)

    @classmethod
    def from_name(cls, name: str, modified_ns: int | None = None) -> ModelSpec:
        """Plausible metadata from a name: ``qwen3:0.6b`` -> 0.6B params, ``*embed*`` -> embedding."""
        shown = display_name(name)
        base, _, tag = model_key(name).rpartition("/")[2].partition(":")
        embedding = "embed" in base or "minilm" in base or base.startswith("bge")
        size_match = re.search(r"(\d+(?:\.\d+)?)([bm])", tag)
        if size_match:
            unit = 1e9 if size_match.group(2) == "b" else 1e6
            params = int(float(size_match.group(1)) * unit)
        else:
            params = 137_000_000 if embedding else 8_030_261_248
        family_match = re.match(r"[a-z]+", base)
        family = "bert" if embedding else (family_match.group(0) if family_match else "llama")
        return cls(
            name=shown,
            family=family,
            parameter_size=f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.2f}M",
            parameter_count=params,
            size=int(params * _QUANT_BYTES_PER_PARAM),
            digest=sha256_hex(model_key(name)),
            capabilities=("embedding",) if embedding else _generative_capabilities(base),
            quantization_level="F16" if embedding else "Q4_K_M",
            context_length=2048 if embedding else 4096,
            embedding_length=768 if embedding else 4096,
            modified_ns=time.time_ns() if modified_ns is None else modified_ns,
        )

    def renamed(self, name: str) -> ModelSpec:
        """A copy under another name (``/api/copy``, ``/api/create`` from an existing model)."""
        return replace(self, name=display_name(name), modified_ns=time.time_ns())


def _generative_capabilities(base: str) -> tuple[str, ...]:
    """A generative model's capabilities from its name: reasoning and vision families say so."""
    found = ["completion", "tools"]
    if re.search(r"qwen3|deepseek-r1|think|gpt-oss", base):
        found.append("thinking")
    if re.search(r"llava|vision|-vl|gemma3", base):
        found.append("vision")
    return tuple(found)


def details(spec: ModelSpec) -> dict:
    """``api.ModelDetails`` in Go field order."""
    return {
        "parent_model": "",
        "format": "gguf",
        "family": spec.family,
        "families": [spec.family],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization_level,
    }


def tags_entry(spec: ModelSpec) -> dict:
    """``api.ListModelResponse`` (one ``/api/tags`` entry)."""
    return {
        "name": spec.name,
        "model": spec.name,
        "modified_at": rfc3339nano_local(spec.modified_ns),
        "size": spec.size,
        "digest": spec.digest,
        "details": details(spec),
    }


def ps_entry(spec: ModelSpec, expires_ns: int) -> dict:
    """``api.ProcessModelResponse`` (one ``/api/ps`` entry); all in VRAM."""
    return {
        "name": spec.name,
        "model": spec.name,
        "size": spec.size,
        "digest": spec.digest,
        "details": details(spec),
        "expires_at": rfc3339nano_local(expires_ns),
        "size_vram": spec.size,
        "context_length": spec.context_length,
    }


def show_response(spec: ModelSpec) -> dict:
    """``api.ShowResponse`` in Go field order; ``model_info`` is always present."""
    arch = spec.family
    parameters = 'stop                           "<|eot_id|>"' if "completion" in spec.capabilities else ""
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {spec.name}\n\n"
        f"FROM /root/.ollama/models/blobs/sha256-{spec.digest}\n"
        'TEMPLATE "{{ .Prompt }}"\n'
    )
    if parameters:
        modelfile += 'PARAMETER stop "<|eot_id|>"\n'
    out: dict = {"modelfile": modelfile}
    if parameters:
        out["parameters"] = parameters
    out["template"] = "{{ .Prompt }}"
    out["details"] = details(spec)
    out["model_info"] = {
        "general.architecture": arch,
        "general.file_type": 15,
        "general.parameter_count": spec.parameter_count,
        "general.quantization_version": 2,
        f"{arch}.context_length": spec.context_length,
        f"{arch}.embedding_length": spec.embedding_length,
        "tokenizer.ggml.model": "gpt2",
    }
    out["capabilities"] = list(spec.capabilities)
    out["modified_at"] = rfc3339nano_local(spec.modified_ns)
    return out


# ---------------------------------------------------------------- text, tokens, vectors


def word_tokens(text: str) -> list[str]:
    """Split into word tokens that keep their leading spaces, so ``"".join`` restores the text."""
    tokens = re.findall(r"\s*\S+", text)
    rest = text[len("".join(tokens)) :]
    if rest:
        if tokens:
            tokens[-1] += rest
        else:
            tokens.append(rest)
    return tokens


def n_tokens(tokens: list[str], limit: int | None) -> list[str]:
    """Exactly ``limit`` tokens (cycling the reply) or the natural reply when ``limit`` is None."""
    if limit is None:
        return tokens
    if not tokens:
        tokens = [" token"]
    again = [" " + tokens[0].lstrip(), *tokens[1:]]  # later rounds start with a space
    out = tokens[:limit]
    while len(out) < limit:
        out.extend(again[: limit - len(out)])
    return out


def count_words(text: object) -> int:
    """The fake's "tokenizer": whitespace-separated words of a string (0 for anything else)."""
    return len(str(text).split()) if isinstance(text, str) else 0


def token_ids(pieces: list[str]) -> list[int]:
    """Deterministic fake token ids for ``/api/generate``'s ``context``."""
    return [int.from_bytes(hashlib.sha256(p.encode()).digest()[:2], "big") for p in pieces]


def _float32(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (how Go prints ``[]float32``)."""
    target = struct.unpack("f", struct.pack("f", x))[0]
    for digits in range(1, 10):
        candidate = float(f"{target:.{digits}g}")
        if struct.unpack("f", struct.pack("f", candidate))[0] == target:
            return candidate
    return target


def raw_vector(text: str, dim: int) -> list[float]:
    """A deterministic pseudo-embedding of ``text`` in [-1, 1) (not normalised)."""
    values: list[float] = []
    counter = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{counter}\0{text}".encode()).digest()
        values.extend(int.from_bytes(digest[i : i + 4], "big") / 2**31 - 1.0 for i in range(0, 32, 4))
        counter += 1
    return values[:dim]


def normalized_vector(text: str, dim: int, dimensions: int | None = None) -> list[float]:
    """``/api/embed``: L2-normalised float32 values, optionally truncated to ``dimensions`` first."""
    values = raw_vector(text, dim)
    if dimensions and 0 < dimensions < dim:
        values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [_float32(v / norm) for v in values]


def metrics(
    total: int = 0, load: int = 0, prompt_count: int = 0, prompt_ns: int = 0, eval_count: int = 0, eval_ns: int = 0
) -> dict:
    """``api.Metrics`` in field order; zero values omitted (Go ``omitempty``)."""
    pairs = (
        ("total_duration", total),
        ("load_duration", load),
        ("prompt_eval_count", prompt_count),
        ("prompt_eval_duration", prompt_ns),
        ("eval_count", eval_count),
        ("eval_duration", eval_ns),
    )
    return {k: v for k, v in pairs if v}


# ---------------------------------------------------------------- inference lines


def chunk(model: str, piece: str, done: bool, chat: bool) -> dict:
    """One ``api.ChatResponse`` / ``api.GenerateResponse`` without the final fields.

    ``model`` is the name as the client sent it; chat lines always carry ``message.role``.
    """
    out: dict = {"model": model, "created_at": rfc3339nano_utc()}
    if chat:
        out["message"] = {"role": "assistant", "content": piece}
    else:
        out["response"] = piece
    out["done"] = done
    return out


def load_answer(model: str, reason: str, chat: bool) -> dict:
    """The answer to a load (empty prompt/messages) or unload (plus ``keep_alive: 0``) request."""
    return {**chunk(model, "", True, chat), "done_reason": reason}


# ---------------------------------------------------------------- pull / push progress


def layers(spec: ModelSpec) -> list[tuple[str, int]]:
    """The blobs a model is made of (weights, template, params) as (hex digest, size)."""
    return [
        (spec.digest, spec.size),
        (sha256_hex(spec.name + "/template"), 1_429),
        (sha256_hex(spec.name + "/params"), 110),
    ]


def pull_steps(spec: ModelSpec) -> list[dict]:
    """``api.ProgressResponse`` lines of a successful pull (``completed`` omitted while 0)."""
    steps: list[dict] = [{"status": "pulling manifest"}]
    for digest, total in layers(spec):
        for completed in (0, total // 2, total):
            step = {"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}", "total": total}
            steps.append({**step, "completed": completed} if completed else step)
    return [*steps, {"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]


def push_steps(spec: ModelSpec) -> list[dict]:
    """``api.ProgressResponse`` lines of a successful push."""
    steps: list[dict] = [{"status": "retrieving manifest"}]
    for digest, total in layers(spec):
        steps.append({"status": "starting upload", "digest": f"sha256:{digest}", "total": total})
        for completed in (total // 2, total):
            steps.append(
                {
                    "status": f"pushing {digest[:12]}",
                    "digest": f"sha256:{digest}",
                    "total": total,
                    "completed": completed,
                }
            )
    return [*steps, {"status": "pushing manifest"}, {"status": "success"}]


def missing_manifest(name: str) -> str:
    """The error Ollama reports when pushing a model it does not have."""
    base, _, tag = model_key(name).rpartition(":")
    base = base if "/" in base else f"library/{base}"
    return f"open /root/.ollama/models/manifests/registry.ollama.ai/{base}/{tag}: no such file or directory"
