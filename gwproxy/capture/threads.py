"""Threads (pure): which stored conversation a request continues, by hashing message prefixes.

A stored message carries ``prefix_hash`` — a hash chained over the normalised messages of its
branch up to and including itself: ``h[i] = sha256(h[i-1] + normalise(m[i]))``. A request whose
``messages`` are ``m[0..n-1]`` continues the stored message whose hash is ``h[n-2]``: its whole
history, all but the new turn, equals that branch, so only the new turn and the reply are stored.
A request that edits an earlier message (and drops what followed, as chat UIs do) has a history
that ends before the edit, so it continues from there: a new branch. A history of system
messages only starts a new conversation (else every chat with the same system prompt would
join the first). Normalising keeps what a client sends back unchanged (role, content, name,
tool calls, tool_call_id) and drops what SDKs add or omit (``null`` fields, reasoning, refusal).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

TITLE_CHARS = 80


def normalise(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": str(message.get("role", "")), "content": message.get("content") or ""}
    if message.get("name"):
        out["name"] = message["name"]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [
            {
                "id": c.get("id"),
                "type": c.get("type") or "function",
                "function": {
                    "name": (c.get("function") or {}).get("name"),
                    "arguments": (c.get("function") or {}).get("arguments"),
                },
            }
            for c in calls
            if isinstance(c, dict)
        ]
    return out


def chain(previous: str, message: dict[str, Any]) -> str:
    digest = hashlib.sha256(previous.encode())
    digest.update(orjson.dumps(normalise(message), option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def prefix_hashes(messages: Sequence[dict[str, Any]]) -> list[str]:
    """``h[i]`` for every prefix ``messages[0..i]``."""
    out: list[str] = []
    previous = ""
    for message in messages:
        previous = chain(previous, message)
        out.append(previous)
    return out


def text_of(content: Any) -> str:
    """The text of a message's content: the string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def title_from(messages: Sequence[dict[str, Any]]) -> str:
    """The first user message, whitespace collapsed, trimmed to ``TITLE_CHARS``."""
    for message in messages:
        if message.get("role") == "user":
            text = " ".join(text_of(message.get("content")).split())
            return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rstrip() + "…"
    return ""
