"""Usage: learning exact token usage from the upstream without changing what the client gets.

vLLM (0.32) sends a stream's final usage-only event only when ``stream_options.include_usage`` is
true (it defaults to false: ``{}`` does not ask for it; vLLM 0.11 defaulted it to true), and usage
on every chunk only with ``continuous_usage_stats`` *and* ``include_usage``. For a stream whose
options would not produce the final event, the gateway asks for it (``inject``: ``include_usage``
true, ``continuous_usage_stats`` false — the client's ``continuous_usage_stats`` had no effect
without ``include_usage``, and must not start to) and the ``UsageTap`` removes that one usage-only
event before ``data: [DONE]`` (DESIGN.md section 2 rule 1). vLLM (0.32) writes
``system_fingerprint`` on the usage event when usage was asked for, and on each event that finishes
a choice when it was not; so the tap puts the removed event's fingerprint on the finish events
before it, and the client gets the bytes vLLM sends for the request the client made. Otherwise the
tap only watches; per-chunk usage is never changed. The tap works on whole SSE events: in stripping
mode it holds back an incomplete trailing event until its end arrives (events are written whole by
vLLM, so this almost never delays anything), and, from the first event that finishes a choice
(``finish_reason`` set), the events until the usage event — with one choice, the finish event
alone, and vLLM writes the usage event right after it; with ``n`` > 1, the other choices' last
events too. In watching mode it forwards every chunk as it came and keeps only a copy of the
incomplete tail to scan.

``/v1/responses`` reports usage as ``input_tokens``/``output_tokens``; its stream always ends with
a ``response.completed`` (or ``response.incomplete``) event that carries it, so nothing is
injected or stripped there: the tap only reads that event.
"""

from __future__ import annotations

import re
from typing import Any

from gwproxy.lax import lax_bool

_USAGE_EVENT = b'"choices":[],"usage":{'
_RESPONSE_DONE = re.compile(rb'"type":"response\.(?:completed|incomplete)"')
_USAGE_KEY = b'"usage":{'
_FINISHED = b'"finish_reason":"'  # a choice's finish event (a null reason has no quote)
# A choice's finish event when vLLM aborts it (0.32), as ``%``-templates of its index.
_CHAT_ABORT = b'{"index":%d,"delta":{},"logprobs":null,"finish_reason":"abort","stop_reason":null,"token_ids":null}'
_COMPLETION_ABORT = (
    b'{"index":%d,"text":"","logprobs":null,"finish_reason":"abort","stop_reason":null,'
    b'"prompt_token_ids":null,"token_ids":null}'
)
_FINGERPRINT = re.compile(rb'"system_fingerprint":"[^"]*"')
_PROMPT = re.compile(rb'"(?:prompt|input)_tokens":(\d+)')
_COMPLETION = re.compile(rb'"(?:completion|output)_tokens":(\d+)')
_TAIL_KEEP = 4096  # bytes of a JSON body kept to find its usage object


def streams(body: dict[str, Any]) -> bool:
    """Whether vLLM will stream its answer (``stream`` read as its lax bool)."""
    return lax_bool(body.get("stream")) is True


def wants_injection(body: dict[str, Any]) -> bool:
    """True when the request streams and vLLM would not send it the final usage event."""
    if not streams(body):
        return False
    options = body.get("stream_options")
    return not (isinstance(options, dict) and lax_bool(options.get("include_usage")) is True)


def inject(body: dict[str, Any]) -> None:
    """Ask the upstream for the final usage event only (other stream_options kept)."""
    options = body.get("stream_options")
    merged = dict(options) if isinstance(options, dict) else {}
    merged["include_usage"] = True
    if merged.get("continuous_usage_stats"):
        merged["continuous_usage_stats"] = False  # it did nothing without include_usage
    body["stream_options"] = merged


def _object_end(segment: bytes, at: int) -> int:
    """The end (exclusive) of the JSON object opening at ``segment[at]`` (which is ``{``); its
    values hold no braces in strings (usage objects are numbers, nulls and objects)."""
    depth = 0
    for i in range(at, len(segment)):
        c = segment[i]
        if c == 0x7B:  # {
            depth += 1
        elif c == 0x7D:  # }
            depth -= 1
            if depth == 0:
                return i + 1
    return len(segment)


def parse_usage(segment: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the last ``"usage":{…}`` object in ``segment``."""
    at = segment.rfind(_USAGE_KEY)
    if at < 0:
        return None
    obj = segment[at : _object_end(segment, at + len(_USAGE_KEY) - 1)]
    prompt, completion = _PROMPT.search(obj), _COMPLETION.search(obj)
    if prompt is None:
        return None
    return int(prompt.group(1)), int(completion.group(1)) if completion else 0


def stamped(before: bytes, usage_event: bytes) -> bytes:
    """``before`` (whole events) with the usage-only ``usage_event``'s ``system_fingerprint`` put
    on each event that finishes a choice — where vLLM (0.32) writes it when usage is not asked for.
    Unchanged when the usage event carries none (vLLM before 0.32)."""
    found = _FINGERPRINT.search(usage_event)
    if found is None:
        return before
    field = b"," + found.group(0)
    out, at = [], 0
    while at < len(before):
        end = before.find(b"\n\n", at) + 2
        if end == 1:
            end = len(before)
        one = before[at:end]
        if one.find(_FINISHED) >= 0 and one.endswith(b"}\n\n"):
            one = one[:-3] + field + b"}\n\n"
        out.append(one)
        at = end
    return b"".join(out)


def _head(events: bytes) -> bytes:
    """The first event's JSON object up to its ``"choices"`` key (``{"id":…,"model":…,``)."""
    if not events.startswith(b"data: {"):
        return b""
    end = events.find(b"\n\n")
    at = events.find(b'"choices":', 0, end)
    return events[6:at] if at > 0 else b""


class UsageTap:
    """Feeds on response chunks; ``usage`` is (prompt, completion) once seen."""

    __slots__ = ("events", "head", "held", "responses", "sse", "strip", "tail", "usage")

    def __init__(self, *, sse: bool, strip: bool, responses: bool = False) -> None:
        self.sse = sse
        self.strip = strip and sse
        self.responses = responses  # a /v1/responses stream: usage is in its final event
        self.tail = b""
        self.held = b""  # stripping: the events from the first finish event on, until the usage event
        self.head = b""  # the first event's JSON up to its "choices" (id, object, created, model)
        self.usage: tuple[int, int] | None = None
        self.events = 0  # complete SSE events seen (a fallback measure of progress)

    def feed(self, chunk: bytes) -> bytes:
        """Return the bytes to send the client for this chunk (``chunk`` itself unless stripping)."""
        if not self.sse:
            self.tail = (self.tail + chunk)[-_TAIL_KEEP:]
            return chunk
        data = self.tail + chunk if self.tail else chunk
        cut = data.rfind(b"\n\n") + 2
        if cut == 1:  # no complete event yet
            self.tail = data
            return b"" if self.strip else chunk
        complete, self.tail = data[:cut], data[cut:]
        if not self.events:
            self.head = _head(complete)
        self.events += complete.count(b"\n\n")
        if self.responses:
            done = _RESPONSE_DONE.search(complete)
            if done is not None:  # the whole event: its "type" comes after the response it carries
                start = complete.rfind(b"\n\n", 0, done.start()) + 2
                self.usage = parse_usage(complete[start : complete.find(b"\n\n", done.start())])
            return chunk
        if self.held:
            complete, self.held = self.held + complete, b""
        at = complete.find(_USAGE_EVENT)
        if at >= 0:
            start = complete.rfind(b"data: ", 0, at)
            end = complete.find(b"\n\n", at) + 2
            self.usage = parse_usage(complete[start:end])
            if self.strip:
                return stamped(complete[:start], complete[start:end]) + complete[end:]
            return chunk
        if not self.strip:
            return chunk
        finished = complete.find(_FINISHED)
        if finished >= 0:  # held from that event on, until the usage event says what goes on it
            first = complete.rfind(b"\n\n", 0, finished)
            first = 0 if first < 0 else first + 2
            self.held = complete[first:]
            return complete[:first]
        return complete

    def aborted(self, choices: int) -> bytes:
        """The end vLLM writes for a stream it aborts: a finish event per choice with
        ``finish_reason: "abort"``, then ``[DONE]`` (empty when the stream's head is unknown)."""
        if not self.head:
            return b""
        kind = _COMPLETION_ABORT if b'"object":"text_completion"' in self.head else _CHAT_ABORT
        events = [b"data: " + self.head + b'"choices":[' + kind % i + b"]}\n\n" for i in range(choices)]
        return b"".join(events) + b"data: [DONE]\n\n"

    def release(self) -> bytes:
        """The complete events held back (stripping mode): for a stream that breaks off."""
        held, self.held = self.held, b""
        return held

    def finish(self) -> bytes:
        """At the end of the body: what is still held back (stripping mode), else nothing."""
        if not self.sse and self.usage is None:
            self.usage = parse_usage(self.tail)
        held, self.held, self.tail = self.held + (self.tail if self.strip else b""), b"", b""
        return held
