"""Responses (pure): ``/v1/responses`` (the OpenAI Responses API) in the terms capture stores —
chat messages in, one assistant message out — so its turns thread and count like chat's.

In: ``instructions`` is a system message; ``input`` a string (one user message) or a list of
items: messages (content a string or ``input_text``/``output_text`` parts, read as their text
joined, as the reply was stored), ``function_call`` items (an assistant tool call) and
``function_call_output`` items (a tool message). Out: the ``response`` object — the plain body,
or the one ``response.completed``/``response.incomplete`` carries at the end of a stream; a stream
cut short yields the ``response.output_text.delta`` text that arrived, with ``complete`` false.
"""

from __future__ import annotations

from typing import Any

import orjson

from gwproxy.capture.assembly import Assembled, scrubbed

_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_DONE = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _text(content: Any) -> Any:
    """A content list of text parts as one string; anything else (images too) as it is."""
    if isinstance(content, list) and content and all(isinstance(p, dict) and p.get("type") in _TEXT_PARTS
                                                     for p in content):  # fmt: skip
        return "".join(str(p.get("text", "")) for p in content)
    return content


def turn_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages a Responses request stands for."""
    out: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        out.append({"role": "system", "content": instructions})
    value = request.get("input")
    if isinstance(value, str):
        return [*out, {"role": "user", "content": value}]
    for item in value if isinstance(value, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message" and "role" in item:
            out.append({"role": str(item["role"]), "content": _text(item.get("content"))})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}  # fmt: skip
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": _text(item.get("output"))})
    return out


def _from_response(out: Assembled, response: dict[str, Any]) -> Assembled:
    out.model = response.get("model") or out.model
    usage = response.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int):
        out.usage = usage["input_tokens"], int(usage.get("output_tokens") or 0)
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            texts += [str(p.get("text", "")) for p in item.get("content") or () if isinstance(p, dict)]
        elif kind == "reasoning":
            for part in [*(item.get("content") or ()), *(item.get("summary") or ())]:
                if isinstance(part, dict) and part.get("text"):
                    thoughts.append(str(part["text"]))
        elif kind == "function_call":
            calls.append({"id": item.get("call_id"), "type": "function",
                          "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}})  # fmt: skip
    out.content = "".join(texts) if texts else None
    out.reasoning = "".join(thoughts) or None
    out.tool_calls = calls or None
    status = response.get("status")
    out.finish_reason = "tool_calls" if calls else "length" if status == "incomplete" else "stop"
    error = response.get("error")
    if isinstance(error, dict) and error.get("message"):
        out.error = str(error["message"])
    out.complete = True
    return out


def assemble_response(body: bytes, *, sse: bool) -> Assembled:
    return scrubbed(_assemble(body, sse), body)


def _assemble(body: bytes, sse: bool) -> Assembled:
    out = Assembled()
    if not sse:
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return out
        if isinstance(obj, dict) and "error" in obj and "output" not in obj:
            err = obj["error"]
            out.error, out.complete = str(err.get("message") if isinstance(err, dict) else err), True
            return out
        return _from_response(out, obj) if isinstance(obj, dict) else out
    parts: list[str] = []
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"".join(line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:"))
        try:
            obj = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            continue  # the cut-off last event of a truncated capture
        if not isinstance(obj, dict):
            continue
        kind = obj.get("type")
        if kind in _DONE and isinstance(obj.get("response"), dict):
            return _from_response(out, obj["response"])
        if kind == "response.created" and isinstance(obj.get("response"), dict):
            out.model = obj["response"].get("model")
        elif kind == "response.output_text.delta" and obj.get("delta"):
            parts.append(str(obj["delta"]))
            out.chunks += 1
    out.content = "".join(parts) if parts else None
    return out
