"""Wire: vLLM's exact response bytes for the simulator (compact JSON, ``data: …\\n\\n`` events).

Key order, field sets and framing follow vLLM's OpenAI server (see DESIGN.md, "vLLM's wire
format"), so what the gateway relays in tests is what it would relay from vLLM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from gwproxy.sim import engine
from gwproxy.sim.engine import Choice

VLLM_VERSION = "0.32.0"
DONE = b"data: [DONE]\n\n"
_ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed"}


def event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error(message: str, status: int, param: str | None = None) -> bytes:
    type_ = _ERROR_TYPES.get(status, "InternalServerError")
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": status}})


def fingerprint(model_path: str, max_model_len: int) -> str:
    """vLLM's ``system_fingerprint``: its version and a digest of how the model is served."""
    digest = hashlib.sha256(f"{model_path}:{max_model_len}".encode()).hexdigest()[:8]
    return f"vllm-{VLLM_VERSION}-{digest}"


def usage(prompt: int, completion: int, kind: str = "answer") -> dict[str, Any]:
    """vLLM's usage object: an answer's has both detail fields, a chunk's (continuous usage) the
    completion's only, an embedding's the prompt's only, a stream's final usage event none."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if kind in ("answer", "embedding"):
        out["prompt_tokens_details"] = None
    if kind in ("answer", "chunk"):
        out["completion_tokens_details"] = None
    return out


@dataclass(frozen=True, slots=True)
class Extras:
    """What a request asked for beyond the text, as vLLM reads it: ``logprobs`` (chat: a
    boolean, with ``top_logprobs`` alternatives; completions: the number of alternatives) and
    ``return_token_ids`` (vLLM ≥ 0.10.2: the prompt's and each choice's token ids)."""

    logprobs: bool = False
    top_logprobs: int = 0
    token_ids: bool = False
    prompt_ids: tuple[tuple[int, ...], ...] = ()  # per prompt; choice i belongs to prompt i // n
    n: int = 1
    fingerprint: str | None = None  # the server's system_fingerprint

    def prompt_of(self, index: int) -> list[int] | None:
        if not self.token_ids or not self.prompt_ids:
            return None
        return list(self.prompt_ids[min(index // max(self.n, 1), len(self.prompt_ids) - 1)])


NONE = Extras()


def _ids(extras: Extras, pieces: list[str]) -> list[int] | None:
    return [engine.token_id(p) for p in pieces] if extras.token_ids else None


def _chat_logprobs(extras: Extras, pieces: list[str]) -> dict[str, Any] | None:
    """``{"content": [...]}`` for ``pieces``: each token, its log-probability, its bytes and the
    ``top_logprobs`` most likely alternatives (the sampled token first)."""
    if not extras.logprobs:
        return None
    content = []
    for piece in pieces:
        top = [
            {"token": alt, "logprob": engine.logprob(piece, rank), "bytes": list(alt.encode())}
            for rank, alt in enumerate(_alternatives(piece, extras.top_logprobs))
        ]
        content.append(
            {"token": piece, "logprob": engine.logprob(piece), "bytes": list(piece.encode()), "top_logprobs": top}
        )
    return {"content": content}


def _alternatives(piece: str, count: int) -> list[str]:
    out = [piece]
    for word in engine.WORDS:
        if len(out) >= count:
            break
        if word != piece.strip():
            out.append(" " + word)
    return out[:count]


def _completion_logprobs(extras: Extras, pieces: list[str], offset: int = 0) -> dict[str, Any] | None:
    """vLLM's legacy completion logprobs: text offsets, token log-probabilities, tokens and the
    top alternatives per token."""
    if not extras.logprobs:
        return None
    offsets, at = [], offset
    for piece in pieces:
        offsets.append(at)
        at += len(piece)
    top = [
        {alt: engine.logprob(p, rank) for rank, alt in enumerate(_alternatives(p, max(extras.top_logprobs, 1)))}
        for p in pieces
    ]
    return {
        "text_offset": offsets,
        "token_logprobs": [engine.logprob(p) for p in pieces],
        "tokens": list(pieces),
        "top_logprobs": top,
    }


def _tool_calls(choice: Choice) -> list[dict[str, Any]]:
    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": "".join(call.arguments)},
        }
        for call in choice.tool_calls
    ]


def chat_completion(
    rid: str, created: int, model: str, choices: list[Choice], prompt_tokens: int, extras: Extras = NONE
) -> bytes:
    out = []
    for c in choices:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if c.tool_calls else c.text,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
        }
        if c.tool_calls:
            message["tool_calls"] = _tool_calls(c)
        message["reasoning"] = "".join(c.reasoning) if c.reasoning else None
        out.append(
            {
                "index": c.index,
                "message": message,
                "logprobs": _chat_logprobs(extras, c.output),
                "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason,
                "token_ids": _ids(extras, c.output),
                "routed_experts": None,
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
            "system_fingerprint": extras.fingerprint,
            "usage": usage(prompt_tokens, sum(c.tokens for c in choices)),
            "prompt_logprobs": None,
            "prompt_token_ids": extras.prompt_of(0),
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def completion(
    rid: str, created: int, model: str, choices: list[Choice], prompt_tokens: int, extras: Extras = NONE
) -> bytes:
    out = [
        {
            "index": c.index,
            "text": c.text,
            "logprobs": _completion_logprobs(extras, c.pieces),
            "finish_reason": c.finish_reason,
            "stop_reason": c.stop_reason,
            "token_ids": _ids(extras, c.pieces),
            "prompt_logprobs": None,
            "prompt_token_ids": extras.prompt_of(c.index),
            "routed_experts": None,
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
            "system_fingerprint": extras.fingerprint,
            "usage": usage(prompt_tokens, sum(c.tokens for c in choices)),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def _chat_deltas(c: Choice) -> list[tuple[dict[str, Any], str | None]]:
    """A choice's deltas after the role chunk, one per step: (delta, the token it carries).
    A tool call opens with its id and name (no token, ``content`` null, as vLLM's parser sends
    it), then its arguments piece by piece."""
    out: list[tuple[dict[str, Any], str | None]] = []
    out += [({"reasoning": p}, p) for p in c.reasoning]
    out += [({"content": p}, p) for p in c.pieces]
    for k, call in enumerate(c.tool_calls):
        head = {"id": call.id, "type": "function", "index": k, "function": {"name": call.name}}
        out.append(({"content": None, "tool_calls": [head]}, None))
        out += [
            ({"content": None, "tool_calls": [{"index": k, "function": {"arguments": a}}]}, a) for a in call.arguments
        ]
    return out


def chat_stream(
    rid: str,
    created: int,
    model: str,
    choices: list[Choice],
    prompt_tokens: int,
    include_usage: bool,
    continuous: bool = False,
    extras: Extras = NONE,
) -> Iterator[list[bytes]]:
    """Steps of a chat stream: each step is the events vLLM writes after one decode step. With
    ``continuous`` (``continuous_usage_stats``, which needs ``include_usage``) every chunk also
    carries the usage so far: the prompt, and the tokens its choice has generated.

    As vLLM 0.32 writes them: the role chunk carries ``prompt_token_ids`` and ``prompt_text``
    (null unless ``return_token_ids``), every later choice ``token_ids``; a choice's finish
    reason rides on the chunk of its last token (a tool call's, on a chunk of its own with an
    empty delta), with ``system_fingerprint`` when no usage event follows; a tool call's header
    rides the step of its first argument (the first call's, the role chunk's step)."""
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
    made = dict.fromkeys((c.index for c in choices), 0)

    def chunk(index: int, delta: dict[str, Any], token: str | None, finish: Choice | None = None) -> bytes:
        tokens = [token] if token is not None else []
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": _chat_logprobs(extras, tokens)}
        choice["finish_reason"] = finish.finish_reason if finish else None
        if finish is not None:
            choice["stop_reason"] = finish.stop_reason
        choice["token_ids"] = _ids(extras, tokens)
        out: dict[str, Any] = {**head, "choices": [choice]}
        if continuous:
            out["usage"] = usage(prompt_tokens, made[index], "chunk")
        if finish is not None and not include_usage and extras.fingerprint:
            out["system_fingerprint"] = extras.fingerprint
        return event(out)

    def role(index: int) -> bytes:
        choice = {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        out: dict[str, Any] = {**head, "choices": [choice]}
        if continuous:
            out["usage"] = usage(prompt_tokens, 0, "chunk")
        out["prompt_token_ids"] = extras.prompt_of(index)
        out["prompt_text"] = None
        return event(out)

    deltas = {c.index: _chat_deltas(c) for c in choices}
    finished: set[int] = set()
    first = []
    for c in choices:
        first.append(role(c.index))
        plan = deltas[c.index]
        if plan and plan[0][1] is None:  # a tool call's header before any token
            first.append(chunk(c.index, plan.pop(0)[0], None))
    yield first
    steps = max((c.tokens for c in choices), default=0)
    for _ in range(steps):
        step = []
        for c in choices:
            plan = deltas[c.index]
            while plan:
                delta, token = plan.pop(0)
                if token is not None:
                    made[c.index] += 1
                last = token is not None and not plan and not c.tool_calls
                step.append(chunk(c.index, delta, token, c if last else None))
                if last:
                    finished.add(c.index)
                if token is not None:
                    break
        yield step
    tail = [chunk(c.index, delta, None) for c in choices for delta, _ in deltas[c.index]]  # headers left over
    tail += [
        chunk(c.index, {"content": ""} if not c.tool_calls else {}, None, c) for c in choices if c.index not in finished
    ]
    if include_usage:
        completion_tokens = sum(c.tokens for c in choices)
        final: dict[str, Any] = {**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens, "final")}
        if extras.fingerprint:
            final["system_fingerprint"] = extras.fingerprint
        tail.append(event(final))
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
    extras: Extras = NONE,
) -> Iterator[list[bytes]]:
    """Steps of a text-completion stream, as ``chat_stream``; every chunk's choice carries
    ``prompt_token_ids`` (the prompt's on the choice's first chunk when asked) and ``token_ids``;
    the finish reason rides on the chunk of the choice's last token."""
    head = {"id": rid, "object": "text_completion", "created": created, "model": model}
    offsets = dict.fromkeys((c.index for c in choices), 0)
    sent_prompt: set[int] = set()

    def chunk(c: Choice, pieces: list[str], made: int, finish: bool = False) -> bytes:
        prompt_ids = None
        if c.index not in sent_prompt:
            sent_prompt.add(c.index)
            prompt_ids = extras.prompt_of(c.index)
        out: dict[str, Any] = {
            **head,
            "choices": [
                {
                    "index": c.index,
                    "text": "".join(pieces),
                    "logprobs": _completion_logprobs(extras, pieces, offsets[c.index]),
                    "finish_reason": c.finish_reason if finish else None,
                    "stop_reason": c.stop_reason if finish else None,
                    "prompt_token_ids": prompt_ids,
                    "token_ids": _ids(extras, pieces),
                }
            ],
        }
        offsets[c.index] += sum(len(p) for p in pieces)
        if continuous:
            out["usage"] = usage(prompt_tokens, made, "chunk")
        if finish and not include_usage and extras.fingerprint:
            out["system_fingerprint"] = extras.fingerprint
        return event(out)

    steps = max((len(c.pieces) for c in choices), default=0)
    for t in range(steps):
        yield [chunk(c, [c.pieces[t]], t + 1, t == len(c.pieces) - 1) for c in choices if t < len(c.pieces)]
    tail = [chunk(c, [], 0, True) for c in choices if not c.pieces]
    if include_usage:
        completion_tokens = sum(c.tokens for c in choices)
        final: dict[str, Any] = {**head, "choices": [], "usage": usage(prompt_tokens, completion_tokens, "final")}
        if extras.fingerprint:
            final["system_fingerprint"] = extras.fingerprint
        tail.append(event(final))
    tail.append(DONE)
    yield tail
