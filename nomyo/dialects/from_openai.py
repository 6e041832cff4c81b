"""OpenAI-compatible answers rewritten as Ollama's, for `/api/*` clients of `/v1` backends.

A stream is translated event by event as it arrives: each piece of text (or reasoning) becomes
one NDJSON line, tool calls (streamed by OpenAI as fragments of a JSON string) become one line
with complete calls and argument objects, and the end becomes Ollama's `done: true` line with
`done_reason` and real counts and durations: from `usage`, from llama-server's `timings`, else
measured and counted by the router (see `UsageMeter`). Shapes: reference §1, §2, §15, §19.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from .context import encode
from .openai import UsageMeter, estimate_tokens, vectors_of

log = logging.getLogger("nomyo.translate")
# OpenAI finish reasons Ollama has no word for; Ollama reports a finished tool call as "stop".
DONE_REASONS = {"tool_calls": "stop", "function_call": "stop"}
DECODE_WEIGHT = 20  # prefill runs this many tokens in the time decoding makes one, roughly


def created_at(ns: int | None = None) -> str:
    """Go's RFC3339Nano in UTC: nanoseconds with trailing zeros trimmed, `Z` suffix."""

    ns = time.time_ns() if ns is None else ns
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{stamp}.{fraction}Z" if fraction else f"{stamp}Z"


def tool_arguments(text: Any) -> dict:
    """OpenAI's argument string as the object Ollama's clients expect. Empty means no
    arguments; text that is not a JSON object is kept, under `arguments`, rather than lost."""

    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    log.warning("tool call arguments are not a JSON object; passed on under 'arguments'")
    return {"arguments": text}


def logprobs_of(choice: dict) -> list[dict] | None:
    """Per-token log probabilities in Ollama's shape, from a chat choice (already that shape,
    under `content`) or a completions choice (parallel `tokens`/`token_logprobs` lists)."""

    data = choice.get("logprobs")
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("content"), list):  # `top_logprobs: []` (not asked for): Ollama omits it
        return [{k: v for k, v in item.items() if k in ("token", "logprob", "bytes", "top_logprobs") and v != []}
                for item in data["content"] if isinstance(item, dict)]
    tokens, values = data.get("tokens"), data.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list):
        return None
    tops = data.get("top_logprobs") if isinstance(data.get("top_logprobs"), list) else []
    out = []
    for i, (token, value) in enumerate(zip(tokens, values, strict=False)):
        item: dict[str, Any] = {"token": token, "logprob": value}
        top = tops[i] if i < len(tops) else None
        if isinstance(top, dict) and top:
            item["top_logprobs"] = [{"token": t, "logprob": lp} for t, lp in top.items()]
        out.append(item)
    return out


def first_choice(choices: Any) -> dict | None:
    """The choice with index 0 (the router never asks for `n` > 1 when it translates)."""

    if not isinstance(choices, list):
        return None
    return next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)


class ToOllama:
    """One answer's translation. `event()` takes each OpenAI chunk (or, for a whole answer,
    the one response object) and returns the Ollama lines it yields; `final()` is the done line.
    With `collect`, text is gathered for one non-streamed answer instead of returned."""

    def __init__(self, model: str, chat: bool, meter: UsageMeter, *, started_ns: int, collect: bool = False,
                 context: list[dict] | None = None):
        self.model = model
        self.context = context  # a generate's messages: the done line carries them as `context`
        self.answer: list[str] = []
        self.chat = chat
        self.meter = meter
        self.collect = collect
        self.started_ns = started_ns
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.finish: str | None = None
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.logprobs: list[dict] = []
        self.calls: dict[int, dict] = {}

    # -- events -------------------------------------------------------------------------------

    def event(self, obj: Any) -> list[dict]:
        if not isinstance(obj, dict):
            return []
        self.meter.observe(obj)
        choice = first_choice(obj.get("choices"))
        if choice is None:
            return []
        lines = self._piece(choice)
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
            lines += self._calls_line()
        return lines

    def _piece(self, choice: dict) -> list[dict]:
        """The text, reasoning and tool-call fragments of one choice."""

        part = choice.get("delta") if isinstance(choice.get("delta"), dict) else choice.get("message")
        if isinstance(part, dict):
            text = part.get("content")
            thinking = part.get("reasoning_content") or part.get("reasoning")
            if self._add_calls(part.get("tool_calls")):
                self._generated()
        else:
            text, thinking = choice.get("text"), None
        text = text if isinstance(text, str) else ""
        thinking = thinking if isinstance(thinking, str) else ""
        logprobs = logprobs_of(choice)
        if not (text or thinking or logprobs):
            return []
        self._generated()
        if self.context is not None:
            self.answer.append(text)
        if self.collect:
            self.text.append(text)
            self.thinking.append(thinking)
            self.logprobs.extend(logprobs or ())
            return []
        line = self._line(text, thinking)
        if logprobs:
            line["logprobs"] = logprobs
        return [line]

    def _generated(self) -> None:
        now = time.perf_counter_ns()
        if self.first_ns is None:
            self.first_ns = now
        self.last_ns = now
        self.meter.tick()

    def _add_calls(self, fragments: Any) -> bool:
        """Merge streamed tool-call fragments by index: id and name come first, the argument
        string arrives in pieces. Whether there were any."""

        if not isinstance(fragments, list) or not fragments:
            return False
        for position, fragment in enumerate(fragments):
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index")
            index = index if isinstance(index, int) else position
            call = self.calls.setdefault(index, {"id": None, "name": "", "arguments": ""})
            call["id"] = fragment.get("id") or call["id"]
            function = fragment.get("function") or {}
            call["name"] = function.get("name") or call["name"]
            arguments = function.get("arguments")
            if isinstance(arguments, dict):
                call["arguments"] = arguments
            elif isinstance(arguments, str) and isinstance(call["arguments"], str):
                call["arguments"] += arguments
        return True

    def _calls_line(self) -> list[dict]:
        """Finished tool calls as one line, as Ollama sends them (content empty)."""

        if not self.calls or self.collect or not self.chat:
            return []
        line = self._line("", "")
        line["message"] = self._with_calls(line["message"])
        self.calls = {}
        return [line]

    def _with_calls(self, message: dict) -> dict:
        calls = []
        for index in sorted(self.calls):
            call = self.calls[index]
            function = {"index": index, "name": call["name"], "arguments": tool_arguments(call["arguments"])}
            calls.append({"id": call["id"], "function": function} if call["id"] else {"function": function})
        return {**message, "tool_calls": calls}

    # -- lines --------------------------------------------------------------------------------

    def _line(self, text: str, thinking: str) -> dict:
        line: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            line["message"] = message
        else:
            line["response"] = text
            if thinking:
                line["thinking"] = thinking
        line["done"] = False
        return line

    def final(self, ended: bool = True) -> dict:
        """The `done: true` line (for a whole answer: the whole answer). `ended` is false when the
        backend's stream stopped without saying why (Ollama then omits `done_reason`)."""

        line = self._line("".join(self.text), "".join(self.thinking))
        if self.chat and self.calls:
            line["message"] = self._with_calls(line["message"])
        if self.logprobs:
            line["logprobs"] = self.logprobs
        line["done"] = True
        reason = self.finish or ("stop" if ended else None)
        if reason:
            line["done_reason"] = DONE_REASONS.get(reason, reason)
        if self.context is not None:
            line["context"] = encode([*self.context, {"role": "assistant", "content": "".join(self.answer)}])
        line.update(self.metrics())
        return line

    def _measured(self, now: int, prompt: int, generated: int, prompt_ns: int | None,
                  eval_ns: int | None) -> tuple[int, int]:
        """Durations the backend did not report: a stream's prefill is the wait for its first
        token; a whole answer's time is split between prefill and decoding (see `_split`)."""

        streamed = self.first_ns is not None and not self.collect
        if prompt_ns is None:
            prompt_ns = self.first_ns - self.started_ns if streamed else _split(now - self.started_ns, prompt,
                                                                                 generated)
        if eval_ns is None:
            if streamed:
                eval_ns = max(1, (self.last_ns or now) - self.first_ns)
            else:
                eval_ns = max(1, now - self.started_ns - prompt_ns) if generated else 0
        return prompt_ns, eval_ns

    def metrics(self) -> dict[str, int]:
        """Ollama's counts and durations (ns); zeros are omitted, as Ollama omits them."""

        now = time.perf_counter_ns()
        prompt, generated = self.meter.counts()
        if self.collect and self.meter.usage is None and self.meter.timings is None:
            generated = estimate_tokens("".join(self.text) + "".join(self.thinking))
        timings = self.meter.timings or {}
        prompt_ns = _ms_to_ns(timings.get("prompt_ms"))
        eval_ns = _ms_to_ns(timings.get("predicted_ms"))
        if prompt_ns is None or eval_ns is None:
            prompt_ns, eval_ns = self._measured(now, prompt, generated, prompt_ns, eval_ns)
        values = {"total_duration": now - self.started_ns, "prompt_eval_count": prompt,
                  "prompt_eval_duration": prompt_ns, "eval_count": generated, "eval_duration": eval_ns}
        return {k: int(v) for k, v in values.items() if v}


def _split(total_ns: int, prompt: int, generated: int) -> int:
    """The prefill's share of a whole answer's time, by token counts (a decoded token costs
    about as much as prefilling DECODE_WEIGHT prompt tokens): a whole answer tells no more."""

    weight = prompt + DECODE_WEIGHT * generated
    return max(1, total_ns * prompt // weight) if prompt and weight else 0


def _ms_to_ns(value: Any) -> int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value * 1_000_000)
    return None


# -- embeddings -----------------------------------------------------------------------------------


def l2_normalize32(vector: list[float]):
    """Unit length in float32, as Ollama's /api/embed computes and writes its vectors: a float32
    array is written with float32's shortest digits (`0.012345679`, not `0.012345678901`)."""

    import numpy as np  # only translated embeddings need it: ~15 MB the router's idle RSS need not carry

    values = np.asarray(vector, dtype=np.float32)
    norm = np.float32(np.sqrt(np.dot(values, values)))
    return values / norm if norm > 0 else values


def embed_answer(obj: Any, model: str, meter: UsageMeter, started_ns: int) -> dict:
    """/api/embed: every vector of the batch, L2-normalised as Ollama's are."""

    meter.observe(obj)
    answer: dict[str, Any] = {"model": model, "embeddings": [l2_normalize32(v) for v in vectors_of(obj)]}
    total = time.perf_counter_ns() - started_ns
    prompt, _ = meter.counts()
    answer |= {k: v for k, v in (("total_duration", total), ("prompt_eval_count", prompt)) if v}
    return answer


def embeddings_answer(obj: Any, meter: UsageMeter) -> dict:
    """/api/embeddings (legacy): the one vector, raw (Ollama does not normalise these)."""

    meter.observe(obj)
    vectors = vectors_of(obj)
    return {"embedding": vectors[0] if vectors else []}
