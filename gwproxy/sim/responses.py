"""Responses: vLLM's ``/v1/responses`` (the OpenAI Responses API), plain and streamed, over the
simulator's engine.

As vLLM serves it: ``input`` (a string, or a list of messages whose content is a string or
``input_text``/``output_text`` parts) and ``instructions`` (a system message) make the prompt;
``max_output_tokens`` bounds the output. The plain answer is one ``response`` object whose
``usage`` has ``input_tokens``/``output_tokens`` (with their details objects). A stream is
``event: <type>\\ndata: <json>\\n\\n`` events — response.created, response.in_progress, the output
item and content part opened, one ``response.output_text.delta`` per token, their ``.done``
events, and ``response.completed`` (also when the status is ``incomplete``) carrying the whole
response with its usage; no ``[DONE]``.

vLLM keeps responses only with ``VLLM_ENABLE_RESPONSES_API_STORE=1`` (here ``--responses-store``),
in the memory of the server that made them (``Store``): a request with ``store`` not false is
kept with the messages it was made from, ``GET /v1/responses/{id}`` returns it, and a request
naming it as ``previous_response_id`` is prompted with that history. An id this server does not
hold is a 404 — whichever server made it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from gwproxy.sim import engine
from gwproxy.sim.engine import Choice, RequestError


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages a Responses request stands for."""
    out: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        out.append({"role": "system", "content": instructions})
    value = body.get("input")
    if isinstance(value, str):
        out.append({"role": "user", "content": value})
        return out
    if not isinstance(value, list) or not value:
        raise RequestError("input must be a string or a list of input items", param="input")
    for item in value:
        if not isinstance(item, dict) or "role" not in item:
            raise RequestError("each input item must be a message with a role", param="input")
        content = item.get("content")
        if isinstance(content, list):
            texts = [str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p]
            content = "".join(texts)
        out.append({"role": str(item["role"]), "content": content})
    return out


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "input_tokens_per_turn": [],
            "cached_tokens_per_turn": [],
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": 0,
            "tool_output_tokens": 0,
            "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": prompt + completion,
    }


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"annotations": [], "text": text, "type": "output_text", "logprobs": None}]
    return {"id": item_id, "content": content, "role": "assistant", "status": status, "type": "message", "phase": None}


def response(
    rid: str, created: int, model: str, body: dict[str, Any], choice: Choice | None, prompt_tokens: int
) -> dict[str, Any]:
    """The response object; ``choice`` None: the one a stream opens with (in progress, empty)."""
    incomplete = choice is not None and choice.finish_reason == "length"
    status = "incomplete" if incomplete else "completed" if choice is not None else "in_progress"
    return {
        "id": rid,
        "created_at": created,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "metadata": body.get("metadata"),
        "model": model,
        "object": "response",
        "output": [_message("msg_" + rid[5:], choice.text, "completed")] if choice is not None else [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature", 1.0),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "background": False,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "previous_response_id": body.get("previous_response_id"),
        "prompt": None,
        "reasoning": None,
        "service_tier": "auto",
        "status": status,
        "text": None,
        "top_logprobs": None,
        "truncation": "disabled",
        "usage": usage(prompt_tokens, choice.tokens) if choice is not None else None,
        "user": body.get("user"),
        "presence_penalty": float(body.get("presence_penalty") or 0.0),
        "frequency_penalty": float(body.get("frequency_penalty") or 0.0),
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "input_messages": None,
        "output_messages": None,
    }


def _event(kind: str, seq: int, fields: dict[str, Any]) -> bytes:
    payload = {**fields, "sequence_number": seq, "type": kind}
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def stream(
    rid: str, created: int, model: str, body: dict[str, Any], choice: Choice, prompt_tokens: int
) -> list[list[bytes]]:
    """The stream's events in decode steps: the opening events with the first token, one delta
    a step, the closing events with the last."""
    item_id = "msg_" + rid[5:]
    opened = response(rid, created, model, body, None, prompt_tokens)
    seq = iter(range(1_000_000))
    head = [
        _event("response.created", next(seq), {"response": opened}),
        _event("response.in_progress", next(seq), {"response": opened}),
        _event(
            "response.output_item.added",
            next(seq),
            {"item": {**_message(item_id, "", "in_progress"), "content": []}, "output_index": 0},
        ),
        _event(
            "response.content_part.added",
            next(seq),
            {
                "content_index": 0,
                "item_id": item_id,
                "output_index": 0,
                "part": {"annotations": [], "text": "", "type": "output_text", "logprobs": None},
            },
        ),
    ]
    steps: list[list[bytes]] = []
    for piece in choice.pieces:
        delta = {"content_index": 0, "delta": piece, "item_id": item_id, "logprobs": [], "output_index": 0}
        steps.append([_event("response.output_text.delta", next(seq), delta)])
    if not steps:
        steps.append([])
    steps[0] = head + steps[0]
    text = choice.text
    part: dict[str, Any] = {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
    final = response(rid, created, model, body, choice, prompt_tokens)
    steps[-1] += [
        _event(
            "response.output_text.done",
            next(seq),
            {"content_index": 0, "item_id": item_id, "logprobs": [], "output_index": 0, "text": text},
        ),
        _event(
            "response.content_part.done",
            next(seq),
            {"content_index": 0, "item_id": item_id, "output_index": 0, "part": part},
        ),
        _event("response.output_item.done", next(seq), {"item": _message(item_id, text, "completed"),
                                                         "output_index": 0}),
        _event("response.completed", next(seq), {"response": final}),  # vLLM's last event, whatever the status
    ]  # fmt: skip
    return steps


class Store:
    """The responses this server made and kept (at most ``limit``; the oldest dropped first)."""

    def __init__(self, enabled: bool, limit: int = 10_000) -> None:
        self.enabled = enabled
        self.limit = limit
        self._kept: OrderedDict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = OrderedDict()

    def history(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The messages before this request's own: those of its ``previous_response_id``."""
        previous = body.get("previous_response_id")
        if previous is None:
            return []
        kept = self._kept.get(str(previous))
        if kept is None:
            raise RequestError(f"Response with id '{previous}' not found.", status=404, param="response_id")
        return kept[0]

    def keep(self, body: dict[str, Any], messages: list[dict[str, Any]], response: dict[str, Any]) -> None:
        """Keep a finished response and what it answered (its text as the assistant's turn)."""
        if not self.enabled or body.get("store") is False:
            return
        said = "".join(p["text"] for item in response["output"] for p in item.get("content", ()) if "text" in p)
        self._kept[response["id"]] = ([*messages, {"role": "assistant", "content": said}], response)
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)

    def get(self, response_id: str) -> dict[str, Any]:
        if not response_id.startswith("resp"):
            raise RequestError(f"Invalid 'response_id': '{response_id}'. Expected an ID that begins with 'resp'.")
        kept = self._kept.get(response_id)
        if kept is None:
            raise RequestError(f"Response with id '{response_id}' not found.", status=404, param="response_id")
        return kept[1]


def prepare(body: dict[str, Any], history: Sequence[dict[str, Any]] = ()) -> tuple[str, dict[str, Any]]:
    """The prompt text (after ``history``, the stored turns it continues), and the body the
    engine's parameters and generation read."""
    prompt = engine.render_chat([*history, *messages_of(body)])
    limit = body.get("max_output_tokens")
    params_body = {k: v for k, v in body.items() if k not in ("tools", "input", "max_output_tokens")}
    if limit is not None:
        params_body["max_tokens"] = limit
    return prompt, params_body
