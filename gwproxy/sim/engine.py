"""Engine: what the simulated model generates for a request — pure and deterministic.

Given the parsed request and a seed, ``generate`` returns every choice's output pieces (one
piece per token), finish reason and stop reason; nothing here knows about time or HTTP. The
tokenizer packs UTF-8 bytes four to a token, so prompt lengths scale like a real tokenizer's and
``decode(encode(s)) == s``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gwproxy.proxy.schema import lax_int

_TEXT = (
    "the model answers with care and the gateway relays every byte as it comes while "
    "tokens flow through the stream from the GPU to the client so latency stays low and "
    "nothing is buffered or lost on the way because each chunk is written at once"
)
WORDS = tuple(_TEXT.split())


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
    tool_call: ToolCall | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def tokens(self) -> int:
        return len(self.pieces) + (len(self.tool_call.arguments) if self.tool_call else 0)


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
    return Params(
        n=int_field("n", 1, 1, MAX_N) or 1,
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


def _pieces(rng: random.Random, count: int) -> list[str]:
    pieces = []
    for i in range(count):
        word = rng.choice(WORDS)
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


def _tool_arguments(rng: random.Random, tool: dict[str, Any]) -> dict[str, Any]:
    params = (tool.get("function") or {}).get("parameters") or {}
    props = params.get("properties") or {}
    args: dict[str, Any] = {}
    for name, spec in props.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(spec, dict) and spec.get("enum"):
            args[name] = rng.choice(spec["enum"])
        elif kind in ("integer", "number"):
            args[name] = rng.randint(1, 100)
        elif kind == "boolean":
            args[name] = rng.random() < 0.5
        elif kind == "array":
            args[name] = [rng.choice(WORDS)]
        else:
            args[name] = rng.choice(WORDS)
    return args


def _pick_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice", "auto")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    messages = body.get("messages") or []
    last = messages[-1] if messages else None
    if choice == "auto" and isinstance(last, dict) and last.get("role") == "tool":
        return None  # the tool answered: now the model speaks
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        for tool in tools:
            if isinstance(tool, dict) and (tool.get("function") or {}).get("name") == wanted:
                return tool
        raise RequestError(f"tool_choice names an unknown function {wanted!r}", param="tool_choice")
    tool = tools[0]
    if not isinstance(tool, dict) or not isinstance((tool.get("function") or {}).get("name"), str):
        raise RequestError("each tool needs function.name", param="tools")
    return tool


def generate(
    body: dict[str, Any],
    params: Params,
    prompt_tokens: int,
    max_model_len: int,
    digest: bytes | None,
    count: int = 1,
) -> list[Choice]:
    """The output of ``count`` prompts × ``n`` choices. Raises ``RequestError`` on overflow."""
    if prompt_tokens >= max_model_len:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt_tokens} input tokens. Please reduce the length of the input "
            "messages.",
            param="messages",
        )
    budget = max_model_len - prompt_tokens
    if params.max_tokens is not None and params.max_tokens > budget:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + params.max_tokens} tokens ({prompt_tokens} in the "
            f"messages, {params.max_tokens} in the completion). Please reduce the length of the "
            "messages or completion.",
            param="max_tokens",
        )
    limit = params.max_tokens if params.max_tokens is not None else budget
    tool = _pick_tool(body)
    choices = []
    for index in range(count * params.n):
        rng = _rng(digest, params, index)
        choice = Choice(index=index)
        if tool is not None:
            name = tool["function"]["name"]
            args = orjson.dumps(_tool_arguments(rng, tool)).decode()
            pieces = [args[i : i + 6] for i in range(0, len(args), 6)]
            call_id = "chatcmpl-tool-" + f"{rng.getrandbits(128):032x}"
            choice.tool_call = ToolCall(call_id, name, pieces[:limit])
            choice.finish_reason = "tool_calls" if len(pieces) <= limit else "length"
            choices.append(choice)
            continue
        natural = max(rng.randint(12, 48), params.min_tokens)
        if params.ignore_eos or natural > limit:
            choice.pieces = _pieces(rng, limit)
            choice.finish_reason = "length"
        else:
            choice.pieces = _pieces(rng, natural)
        _apply_stop(choice, params.stop)
        choices.append(choice)
    return choices


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vec = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [v / norm for v in vec]
