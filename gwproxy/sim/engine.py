"""Engine: what the simulated model generates for a request — pure and deterministic.

Given the parsed request and a seed, ``generate`` returns every choice's output pieces (one
piece per token: reasoning, then content, or tool-call arguments), finish reason and stop
reason; nothing here knows about time or HTTP. The tokenizer packs UTF-8 bytes four to a token,
so prompt lengths scale like a real tokenizer's and ``decode(encode(s)) == s``; an output piece's
token id and log-probability are functions of its text (``token_id``, ``logprob``).

What the simulated model does, so tests can ask for each vLLM feature:
- tools offered (and ``tool_choice`` not ``none``) → it calls the first tool, or with
  ``parallel_tool_calls: true`` every tool offered, each call's arguments valid for its schema;
- ``response_format`` ``json_schema`` / ``json_object`` → the content is JSON valid for the schema;
- a ``reasoning`` model (``gwproxy sim --reasoning``) thinks first: ``reasoning_content`` pieces,
  then the answer.
"""

from __future__ import annotations

import hashlib
import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gwproxy.lax import lax_int

_TEXT = (
    "the model answers with care and the gateway relays every byte as it comes while "
    "tokens flow through the stream from the GPU to the client so latency stays low and "
    "nothing is buffered or lost on the way because each chunk is written at once"
)
WORDS = tuple(_TEXT.split())
# Words with two-, three- and four-byte UTF-8 characters: the vocabulary of a model whose bytes
# are split across writes (``gwproxy sim --split-writes``), so a relay that decodes a partial
# character is caught.
UNICODE_WORDS = (*WORDS, "naïve", "café", "über", "→", "日本語", "🙂", "Ωmega")


class RequestError(Exception):
    """A request the simulated vLLM refuses; ``status`` 400 or 404 as vLLM answers."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


def encode(text: str) -> list[int]:
    data = text.encode()
    return [int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4)]


def decode(tokens: Sequence[int]) -> str:
    out = bytearray()
    for tok in tokens:
        if tok < 0 or tok >= 1 << 32:
            raise RequestError(f"token id {tok} is out of vocabulary", param="tokens")
        out += tok.to_bytes(4, "big").lstrip(b"\0") if tok else b""
    return out.decode(errors="replace")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict):
                parts.append("<|media|>" * 16)  # images and audio cost tokens too
        return "".join(parts)
    raise RequestError("message content must be a string or a list of parts", param="messages")


def render_chat(messages: Any) -> str:
    """A chat template: the text whose token count is the prompt's length."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", param="messages")
    out = []
    for msg in messages:
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise RequestError("each message needs a string 'role'", param="messages")
        text = _content_text(msg.get("content"))
        if msg.get("tool_calls"):
            text += orjson.dumps(msg["tool_calls"]).decode()
        out.append(f"<|{msg['role']}|>\n{text}\n")
    out.append("<|assistant|>\n")
    return "".join(out)


def token_id(piece: str) -> int:
    """The token id of an output piece (stable, within a 32-bit vocabulary)."""
    return zlib.crc32(piece.encode()) & 0x7FFFFFFF


def logprob(piece: str, rank: int = 0) -> float:
    """The log-probability of ``piece`` as the ``rank``-th most likely token (0 = the one sampled)."""
    base = (zlib.crc32(piece.encode()) % 1000) / 1000
    return -round(0.05 + base * 0.5 + rank * 1.25, 6)


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: list[str]  # the JSON arguments, one piece per token


@dataclass(slots=True)
class Choice:
    index: int
    pieces: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    stop_reason: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)  # thought pieces, before the content

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def tool_call(self) -> ToolCall | None:
        return self.tool_calls[0] if self.tool_calls else None

    @property
    def output(self) -> list[str]:
        """Every generated piece in order: one per token."""
        return self.reasoning + self.pieces + [a for call in self.tool_calls for a in call.arguments]

    @property
    def tokens(self) -> int:
        return len(self.reasoning) + len(self.pieces) + sum(len(call.arguments) for call in self.tool_calls)


@dataclass(slots=True)
class Params:
    """The sampling parameters the simulator honours."""

    n: int = 1
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    seed: int | None = None


MAX_N = 128  # choices per request; a real server is bounded by its KV cache, the simulator by this


def parse_params(body: dict[str, Any]) -> Params:
    def int_field(name: str, default: int | None, minimum: int, maximum: int = 2**63 - 1) -> int | None:
        """An integer as vLLM's pydantic models take one: 5, 5.0 or "5"."""
        value = body.get(name)
        if value is None:
            return default
        number = lax_int(value) if not isinstance(value, bool) else None
        if number is None or not minimum <= number <= maximum:
            raise RequestError(f"{name} must be an integer from {minimum} to {maximum}", param=name)
        return number

    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise RequestError("stop must be a string or a list of strings", param="stop")
    max_tokens = int_field("max_completion_tokens", None, 1)
    if max_tokens is None:
        max_tokens = int_field("max_tokens", None, 1)
    n = int_field("n", 1, 1, MAX_N) or 1
    temperature = body.get("temperature")
    if n > 1 and isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature < 1e-5:
        raise RequestError(f"n must be 1 when using greedy sampling, got {n}.")  # vLLM's words (param null)
    return Params(
        n=n,
        max_tokens=max_tokens,
        stop=[s for s in stops if s],
        ignore_eos=bool(body.get("ignore_eos", False)),
        min_tokens=int_field("min_tokens", 0, 0) or 0,
        seed=int_field("seed", None, -(2**63)),
    )


def request_digest(global_seed: int | None, body: dict[str, Any]) -> bytes | None:
    """A digest of (seed, request): the source of ids, timestamps and text when seeded.

    The request is canonicalised (sorted keys, compact) and ``stream_options`` left out, so the
    same request yields the same bytes whether or not a proxy re-serialised it or asked for the
    usage event."""
    if global_seed is None:
        return None
    canonical = {k: v for k, v in body.items() if k != "stream_options"}
    data = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(global_seed.to_bytes(8, "big", signed=True) + data).digest()


def _rng(digest: bytes | None, params: Params, index: int) -> random.Random:
    if digest is not None:
        return random.Random(digest + index.to_bytes(4, "big"))
    if params.seed is not None:
        return random.Random(params.seed * 1009 + index)
    return random.Random()


def _pieces(rng: random.Random, count: int, words: Sequence[str] = WORDS) -> list[str]:
    pieces = []
    for i in range(count):
        word = rng.choice(words)
        if i == 0:
            word = word.capitalize()
        elif rng.random() < 0.08:
            word += "."
        pieces.append(word if i == 0 else " " + word)
    return pieces


def _apply_stop(choice: Choice, stops: list[str]) -> None:
    if not stops:
        return
    text = ""
    for i, piece in enumerate(choice.pieces):
        text += piece
        hits = [(text.find(s), s) for s in stops if s in text]
        if hits:
            at, stop = min(hits)
            keep = len(piece) - (len(text) - at)
            choice.pieces = choice.pieces[:i] + ([piece[:keep]] if keep > 0 else [])
            choice.finish_reason, choice.stop_reason = "stop", stop
            return


def _value(rng: random.Random, schema: Any, depth: int = 0) -> Any:
    """A value valid for a (JSON Schema) ``schema``: objects with every property, enums, arrays
    of one item, numbers within ``minimum``/``maximum``."""
    if not isinstance(schema, dict):
        return rng.choice(WORDS)
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _value(rng, schema[key][0], depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        if depth > 6:
            return {}
        return {name: _value(rng, spec, depth + 1) for name, spec in props.items()}
    if kind == "array":
        low = int(schema.get("minItems", 1) or 0)
        return [_value(rng, schema.get("items"), depth + 1) for _ in range(max(low, 1))]
    if kind in ("integer", "number"):
        low = math.ceil(schema.get("minimum", 1))
        high = math.floor(schema.get("maximum", max(low, 100)))
        return rng.randint(low, max(low, high))
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(WORDS)


def _tool_arguments(rng: random.Random, tool: dict[str, Any]) -> dict[str, Any]:
    params = (tool.get("function") or {}).get("parameters") or {}
    value = _value(rng, {"type": "object", **params} if isinstance(params, dict) else {})
    return value if isinstance(value, dict) else {}


def _pick_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools the model calls: none, the named one, the first, or (``parallel_tool_calls:
    true``) every tool offered."""
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if not isinstance(tools, list) or not tools or choice == "none":
        return []
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if choice == "auto" and isinstance(last, dict) and last.get("role") == "tool":
        return []  # the tool answered: now the model speaks
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance((tool.get("function") or {}).get("name"), str):
            raise RequestError("each tool needs function.name", param="tools")
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        for tool in tools:
            if tool["function"]["name"] == wanted:
                return [tool]
        raise RequestError(f"tool_choice names an unknown function {wanted!r}", param="tool_choice")
    return list(tools) if body.get("parallel_tool_calls") is True else [tools[0]]


def _format_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema ``response_format`` asks the content to follow, if any."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object", "properties": {"answer": {"type": "string"}}}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError("response_format.json_schema needs a 'schema' object", param="response_format")
        return schema
    return None


def _split(text: str, size: int = 6) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def generate(
    body: dict[str, Any],
    params: Params,
    prompt_tokens: int,
    max_model_len: int,
    digest: bytes | None,
    count: int = 1,
    reasoning: bool = False,
    words: Sequence[str] = WORDS,
) -> list[Choice]:
    """The output of ``count`` prompts × ``n`` choices. Raises ``RequestError`` on overflow."""
    if params.max_tokens is not None and params.max_tokens > max_model_len:
        raise RequestError(
            f"max_tokens={params.max_tokens} cannot be greater than max_model_len={max_model_len}. Please request "
            f"fewer output tokens. (parameter=max_tokens, value={params.max_tokens})",
            param="max_tokens",
        )
    if prompt_tokens > max_model_len:  # vLLM's tokenizer stops counting one past the limit
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains at "
            f"least {max_model_len + 1} input tokens, which exceeds this limit even without any output tokens. "
            f"Please reduce the length of the input prompt. (parameter=input_tokens, value={max_model_len + 1})",
            param="input_tokens",
        )
    budget = max_model_len - prompt_tokens  # vLLM 0.32 caps max_tokens to what is left
    limit = min(params.max_tokens, budget) if params.max_tokens is not None else budget
    tools = _pick_tools(body)
    schema = _format_schema(body)
    choices = []
    for index in range(count * params.n):
        rng = _rng(digest, params, index)
        choice = Choice(index=index)
        left = limit
        if reasoning:
            choice.reasoning = _pieces(rng, min(left, rng.randint(4, 12)), words)
            left -= len(choice.reasoning)
        if tools:
            wanted = 0
            for tool in tools:
                pieces = _split(orjson.dumps(_tool_arguments(rng, tool)).decode())
                wanted += len(pieces)
                call_id = "chatcmpl-tool-" + f"{rng.getrandbits(128):032x}"
                choice.tool_calls.append(ToolCall(call_id, tool["function"]["name"], pieces[: max(left, 0)]))
                left -= min(max(left, 0), len(pieces))
            made = sum(len(call.arguments) for call in choice.tool_calls)
            choice.finish_reason = "tool_calls" if made == wanted else "length"
            choices.append(choice)
            continue
        if schema is not None:
            pieces = _split(orjson.dumps(_value(rng, schema)).decode())
            choice.pieces = pieces[:left]
            choice.finish_reason = "length" if len(pieces) > left else "stop"
            choices.append(choice)
            continue
        natural = max(rng.randint(12, 48), params.min_tokens)
        if params.ignore_eos or natural > left:
            choice.pieces = _pieces(rng, left, words)
            choice.finish_reason = "length"
        else:
            choice.pieces = _pieces(rng, natural, words)
        _apply_stop(choice, params.stop)
        choices.append(choice)
    return choices


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vec = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]
