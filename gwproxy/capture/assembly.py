"""Assembly (pure): a captured response body → the assistant message it carried.

Handles what vLLM sends for ``/v1/chat/completions`` and ``/v1/completions``, streamed (SSE:
``data: {json}`` events, ``data: [DONE]``) or not (one JSON body): content, reasoning
(``reasoning_content``, or ``reasoning`` in newer vLLM), tool calls assembled from their deltas
(keyed by ``index``: id, name and argument fragments concatenated), finish reason, usage. Only
the first choice (``index`` 0) is kept. A body cut short (client gone, capture bound reached)
yields what arrived, with ``complete`` false.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gwproxy.capture.record import without_nul


@dataclass(slots=True)
class Assembled:
    model: str | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: tuple[int, int] | None = None  # (prompt, completion)
    complete: bool = False
    error: str | None = None
    chunks: int = 0  # content-bearing stream events (≈ tokens, when usage never came)
    _parts: list[str] = field(default_factory=list)
    _reasoning: list[str] = field(default_factory=list)
    _tools: dict[int, dict[str, Any]] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        """The assistant message as the OpenAI API writes it (what a client sends back)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


def _usage(obj: dict[str, Any]) -> tuple[int, int] | None:
    usage = obj.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        return usage["prompt_tokens"], int(usage.get("completion_tokens") or 0)
    return None


def _first_choice(obj: dict[str, Any]) -> dict[str, Any] | None:
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def _merge_tool_delta(tools: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
    index = delta.get("index", 0)
    call = tools.setdefault(index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    fn = delta.get("function") or {}
    if fn.get("name"):
        call["function"]["name"] += fn["name"]
    if fn.get("arguments"):
        call["function"]["arguments"] += fn["arguments"]


def _event(out: Assembled, obj: dict[str, Any], chat: bool) -> None:
    if "error" in obj and not obj.get("choices"):
        err = obj["error"]
        out.error = str(err.get("message") if isinstance(err, dict) else err)
        return
    out.model = out.model or obj.get("model")
    out.usage = _usage(obj) or out.usage
    choice = _first_choice(obj)
    if choice is None:
        return
    if choice.get("finish_reason"):
        out.finish_reason = choice["finish_reason"]
    if not chat:
        if choice.get("text"):
            out._parts.append(choice["text"])
            out.chunks += 1
        return
    delta = choice.get("delta") or {}
    text = delta.get("content")
    if text:
        out._parts.append(text)
        out.chunks += 1
    thought = delta.get("reasoning_content") or delta.get("reasoning")
    if thought:
        out._reasoning.append(thought)
        out.chunks += 1
    for call in delta.get("tool_calls") or ():
        if isinstance(call, dict):
            _merge_tool_delta(out._tools, call)


def _finish(out: Assembled) -> Assembled:
    out.content = "".join(out._parts) if out._parts or out.content is None else out.content
    if out._reasoning:
        out.reasoning = "".join(out._reasoning)
    if out._tools:
        out.tool_calls = [out._tools[i] for i in sorted(out._tools)]
    return out


def assemble_stream(body: bytes, chat: bool = True) -> Assembled:
    out = Assembled()
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        if not data:
            continue
        if data == b"[DONE]":
            out.complete = True
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue  # the cut-off last event of a truncated capture
        if isinstance(obj, dict):
            _event(out, obj, chat)
    return _finish(out)


def assemble_json(body: bytes, chat: bool = True) -> Assembled:
    out = Assembled()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return out
    if not isinstance(obj, dict):
        return out
    out.complete = True
    if "error" in obj and not obj.get("choices"):
        _event(out, obj, chat)
        return out
    out.model, out.usage = obj.get("model"), _usage(obj)
    choice = _first_choice(obj)
    if choice is not None:
        out.finish_reason = choice.get("finish_reason")
        if chat:
            msg = choice.get("message") or {}
            out.content = msg.get("content")
            out.reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            out.tool_calls = msg.get("tool_calls") or None
        else:
            out.content = choice.get("text")
    return out


def assemble(body: bytes, *, sse: bool, chat: bool) -> Assembled:
    """The reply in ``body``. A NUL character the model sent (``\\u0000`` in its JSON) is read as
    U+FFFD, as in the request (``Record.loads``): PostgreSQL cannot store it in text."""
    return scrubbed(assemble_stream(body, chat) if sse else assemble_json(body, chat), body)


def scrubbed(out: Assembled, body: bytes) -> Assembled:
    """``out`` with NUL characters read as U+FFFD, when ``body`` (its JSON) held any."""
    if b"\\u0000" in body:
        out.model, out.content, out.reasoning, out.tool_calls, out.error = without_nul(
            [out.model, out.content, out.reasoning, out.tool_calls, out.error]
        )
    return out
