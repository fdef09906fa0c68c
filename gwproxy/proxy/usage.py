"""Usage: learning exact token usage from the upstream without changing what the client gets.

vLLM sends a stream's final usage-only event when ``stream_options`` is present and its
``include_usage`` is not false or null (it defaults to true once the object is there: ``{}``
asks for it), and usage on every chunk only with ``continuous_usage_stats`` *and*
``include_usage``. For a stream whose options would not produce the final event, the gateway asks
for it (``inject``: ``include_usage`` true, ``continuous_usage_stats`` false — the client's
``continuous_usage_stats`` had no effect without ``include_usage``, and must not start to) and
the ``UsageTap`` removes that one usage-only event before ``data: [DONE]`` (DESIGN.md section 2
rule 1). Otherwise the tap only watches; per-chunk usage is never changed. The tap works on whole SSE events:
in stripping mode it holds back an incomplete trailing event until its end arrives (events are
written whole by vLLM, so this almost never delays anything); in watching mode it forwards every
chunk as it came and keeps only a copy of the incomplete tail to scan.

``/v1/responses`` reports usage as ``input_tokens``/``output_tokens``; its stream always ends with
a ``response.completed`` (or ``response.incomplete``) event that carries it, so nothing is
injected or stripped there: the tap only reads that event.
"""

from __future__ import annotations

import re
from typing import Any

from gwproxy.proxy.schema import lax_bool

_USAGE_EVENT = b'"choices":[],"usage":{'
_RESPONSE_DONE = re.compile(rb'"type":"response\.(?:completed|incomplete)"')
_USAGE_KEY = b'"usage":{'
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
    return not (isinstance(options, dict) and options.get("include_usage", True) is True)


def inject(body: dict[str, Any]) -> None:
    """Ask the upstream for the final usage event only (other stream_options kept)."""
    options = body.get("stream_options")
    merged = dict(options) if isinstance(options, dict) else {}
    merged["include_usage"] = True
    if merged.get("continuous_usage_stats"):
        merged["continuous_usage_stats"] = False  # it did nothing without include_usage
    body["stream_options"] = merged


def parse_usage(segment: bytes) -> tuple[int, int] | None:
    """(prompt, completion) tokens from the last ``"usage":{…}`` object in ``segment``."""
    at = segment.rfind(_USAGE_KEY)
    if at < 0:
        return None
    depth, end = 0, len(segment)  # the object's end: it may hold objects (the Responses API's details)
    for i in range(at + len(_USAGE_KEY) - 1, len(segment)):
        c = segment[i]
        if c == 0x7B:  # {
            depth += 1
        elif c == 0x7D:  # }
            depth -= 1
            if depth == 0:
                end = i + 1
                break
    obj = segment[at:end]
    prompt, completion = _PROMPT.search(obj), _COMPLETION.search(obj)
    if prompt is None:
        return None
    return int(prompt.group(1)), int(completion.group(1)) if completion else 0


class UsageTap:
    """Feeds on response chunks; ``usage`` is (prompt, completion) once seen."""

    __slots__ = ("events", "responses", "sse", "strip", "tail", "usage")

    def __init__(self, *, sse: bool, strip: bool, responses: bool = False) -> None:
        self.sse = sse
        self.strip = strip and sse
        self.responses = responses  # a /v1/responses stream: usage is in its final event
        self.tail = b""
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
        self.events += complete.count(b"\n\n")
        if self.responses:
            done = _RESPONSE_DONE.search(complete)
            if done is not None:  # the whole event: its "type" comes after the response it carries
                start = complete.rfind(b"\n\n", 0, done.start()) + 2
                self.usage = parse_usage(complete[start : complete.find(b"\n\n", done.start())])
            return chunk
        at = complete.find(_USAGE_EVENT)
        if at >= 0:
            start = complete.rfind(b"data: ", 0, at)
            end = complete.find(b"\n\n", at) + 2
            self.usage = parse_usage(complete[start:end])
            if self.strip:
                return complete[:start] + complete[end:]
        return complete if self.strip else chunk

    def finish(self) -> bytes:
        """At the end of the body: what is still held back (stripping mode), else nothing."""
        if not self.sse and self.usage is None:
            self.usage = parse_usage(self.tail)
        held, self.tail = (self.tail if self.strip else b""), b""
        return held
