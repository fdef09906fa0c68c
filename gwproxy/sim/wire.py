"""Wire: vLLM's exact response bytes for the simulator (compact JSON, ``data: …\\n\\n`` events).

Key order, field sets and framing follow vLLM's OpenAI server (see DESIGN.md, "vLLM's wire
format"), so what the gateway relays in tests is what it would relay from vLLM.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from gwproxy.sim.engine import Choice

DONE = b"data: [DONE]\n\n"
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed"}


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error(message: str, status: int) -> bytes:
    type_ = _ERROR_TYPES.get(status, "InternalServerError")
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": status}})


def usage(prompt: int, completion: int, details: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if details:
        out["prompt_tokens_details"] = None
    return out


def _tool_calls(choice: Choice) -> list[dict[str, Any]]:
    call = choice.tool_call
    if call is None:
        return []
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": "".join(call.arguments)},
        }
    ]


def chat_completion(rid: str, created: int, model: str, choices: list[Choice], prompt_tokens: int) -> bytes:
    out = []
    for c in choices:
        message = {
            "role": "assistant",
            "content": None if c.tool_call else c.text,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": _tool_calls(c),
            "reasoning_content": None,
        }
        out.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": None,
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
            }
        )
    return orjson.dumps(
        {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": out,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage(prompt_tokens, sum(c.tokens for c in choices)),
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
    )


def completion(rid: str, created: int, model: str, choices: list[Choice], prompt_tokens: int) -> bytes:
    out = [
        {
            "index": c.index,
            "text": c.text,
            "logprobs": None,
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
            "prompt_logprobs": None,
        }
        for c in choices
    ]
    return orjson.dumps(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": out,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage(prompt_tokens, sum(c.tokens for c in choices)),
            "kv_transfer_params": None,
        }
    )


def chat_stream(
    rid: str,
    created: int,
    model: str,
    choices: list[Choice],
    prompt_tokens: int,
    include_usage: bool,
    continuous: bool = False,
) -> Iterator[list[bytes]]:
    """Steps of a chat stream: each step is the events vLLM writes after one decode step. With
    ``continuous`` (``continuous_usage_stats``, which needs ``include_usage``) every chunk also
    carries the usage so far: the prompt, and the tokens its choice has generated."""
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    made = dict.fromkeys((c.index for c in choices), 0)

    def chunk(index: int, delta: dict[str, Any], finish: Choice | None = None) -> bytes:
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None}
        choice["finish_reason"] = finish.finish_reason if finish else None
        if finish is not None:
            choice["stop_reason"] = finish.stop_reason
        out: dict[str, Any] = {**head, "choices": [choice]}
        if continuous:
            out["usage"] = usage(prompt_tokens, made[index], False)
        return event(out)

    first = []
    for c in choices:
        first.append(chunk(c.index, {"role": "assistant", "content": ""}))
        if c.tool_call:
            call = c.tool_call
            first.append(
                chunk(
                    c.index,
                    {
                        "tool_calls": [
                            {
                                "id": call.id,
                                "type": "function",
                                "index": 0,
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    },
                )
            )
    yield first
    steps = max((c.tokens for c in choices), default=0)
    for t in range(steps):
        step = []
        for c in choices:
            if t < c.tokens:
                made[c.index] = t + 1
            if c.tool_call and t < len(c.tool_call.arguments):
                delta: dict[str, Any] = {
                    "tool_calls": [{"index": 0, "function": {"arguments": c.tool_call.arguments[t]}}]
                }
                step.append(chunk(c.index, delta))
            elif not c.tool_call and t < len(c.pieces):
                step.append(chunk(c.index, {"content": c.pieces[t]}))
        yield step
    tail = [chunk(c.index, {"content": ""} if not c.tool_call else {}, c) for c in choices]
    if include_usage:
        completion_tokens = sum(c.tokens for c in choices)
        tail.append(event({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens, False)}))
    tail.append(DONE)
    yield tail


def completion_stream(
    rid: str,
    created: int,
    model: str,
    choices: list[Choice],
    prompt_tokens: int,
    include_usage: bool,
    continuous: bool = False,
) -> Iterator[list[bytes]]:
    """Steps of a text-completion stream, as ``chat_stream``."""
    head = {"id": rid, "object": "text_completion", "created": created, "model": model}

    def chunk(index: int, text: str, made: int, finish: Choice | None = None) -> bytes:
        out: dict[str, Any] = {
            **head,
            "choices": [
                {
                    "index": index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish.finish_reason if finish else None,
                    "stop_reason": finish.stop_reason if finish else None,
                }
            ],
        }
        if continuous:
            out["usage"] = usage(prompt_tokens, made, False)
        return event(out)

    steps = max((len(c.pieces) for c in choices), default=0)
    for t in range(steps):
        yield [chunk(c.index, c.pieces[t], t + 1) for c in choices if t < len(c.pieces)]
    tail = [chunk(c.index, "", len(c.pieces), c) for c in choices]
    if include_usage:
        completion_tokens = sum(c.tokens for c in choices)
        tail.append(event({**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens, False)}))
    tail.append(DONE)
    yield tail
