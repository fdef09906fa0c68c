"""Record: what one captured request leaves for the writer, and the recorder that gathers it.

The ``Recorder`` is attached to the request's exchange (as its tee) by the capture middleware;
the relay tees every chunk it sends the client into ``feed`` (a list append, up to ``limit``
bytes, then only a count). When the response is over the middleware encodes what the writer
needs as one line (``wire``) and hands it to the sink.

Two encodings of one record:
- the wire line, built on the request path: a JSON array in ``WIRE_FIELDS`` order after a
  version number, with the request body embedded as it was sent (valid JSON already: it is not
  parsed or serialised again) and nothing computed that the writer can compute later;
- the spool line (``Record.dumps``): a JSON object by field name, for the disk spool and the
  rejected file, which outlive the gateway's version.
``Record.loads`` reads both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

RESPONSES_ROUTE = "/v1/responses"


@dataclass(slots=True)
class Record:
    request_id: str
    user_id: int
    key_id: int | None
    route: str
    status: int
    created_at: float  # wall-clock seconds the request arrived
    request: dict[str, Any]  # model, messages or prompt (what threading and storage need)
    response: str  # the bytes the client got (bounded), as text
    sse: bool
    truncated: bool
    model: str | None = None
    conversation_id: str | None = None  # X-Conversation-Id, or /api/chat's conversation
    create_conversation: bool = False  # /api/chat minted the id: create it if it is new
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None

    def dumps(self) -> bytes:
        return orjson.dumps(self)  # orjson reads the dataclass as it is (``asdict`` deep-copies)

    @classmethod
    def loads(cls, raw: bytes) -> Record:
        """A spool line (an object) or a wire line (an array); ``ValueError`` if it is neither.
        NUL characters (which a client may send and PostgreSQL cannot store in text) are read
        as U+FFFD, so such a turn is stored like any other, on either database."""
        data = orjson.loads(raw)
        if b"\\u0000" in raw:
            data = without_nul(data)
        if isinstance(data, dict):
            return cls(**data)
        if not isinstance(data, list) or not data or data[0] != WIRE_VERSION or len(data) != len(WIRE_FIELDS) + 1:
            raise ValueError("not a capture record of this version")
        fields = dict(zip(WIRE_FIELDS, data[1:], strict=True))
        body = fields.pop("request")
        request = request_fields(body if isinstance(body, dict) else None)
        model = request.get("model")
        ttft, duration = fields["ttft_ms"], fields["duration_ms"]
        fields["ttft_ms"] = None if ttft is None else round(ttft, 3)
        fields["duration_ms"] = None if duration is None else round(duration, 3)
        return cls(request=request, model=model if isinstance(model, str) else None, **fields)


WIRE_VERSION = 1
WIRE_FIELDS = (
    "request_id", "user_id", "key_id", "route", "status", "created_at", "request", "response", "sse",
    "truncated", "conversation_id", "create_conversation", "prompt_tokens", "completion_tokens", "ttft_ms",
    "duration_ms",
)  # fmt: skip


def wire(
    request_id: str, user_id: int, key_id: int | None, route: str, status: int, created_at: float,
    request: bytes | None, recorder: Recorder, conversation_id: str | None, prompt_tokens: int | None,
    completion_tokens: int | None, ttft_ms: float | None, duration_ms: float,
) -> bytes:  # fmt: skip
    """One record as a wire line (see the module's docstring); ``request`` is a JSON body."""
    if request is not None and b"\n" in request:
        request = request.replace(b"\n", b" ")  # in valid JSON a raw newline is only ever whitespace
    body = None if request is None else orjson.Fragment(request)
    line = (
        WIRE_VERSION, request_id, user_id, key_id, route, status, created_at, body, recorder.body(), recorder.sse,
        recorder.truncated, conversation_id, recorder.create_conversation, prompt_tokens, completion_tokens,
        ttft_ms, duration_ms,
    )  # fmt: skip
    return orjson.dumps(line)


class RecordSink(Protocol):
    """Where the capture middleware hands records (wire lines): the writer, or the courier to the
    writer's process."""

    def submit(self, line: bytes) -> None: ...


class Recorder:
    """The exchange's tee (``gwproxy.proxy.exchange.Tee``): what the client got, bounded."""

    __slots__ = ("chunks", "conversation_id", "create_conversation", "limit", "size", "sse", "truncated")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.truncated = False
        self.sse = False
        self.conversation_id: str | None = None
        self.create_conversation = False

    def feed(self, chunk: bytes) -> None:
        if self.size + len(chunk) <= self.limit:
            self.chunks.append(chunk)
        elif not self.truncated:
            room = self.limit - self.size
            if room > 0:
                self.chunks.append(chunk[:room])
            self.truncated = True
        self.size += len(chunk)

    def body(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


def without_nul(data: Any) -> Any:
    """``data`` with every NUL character in its strings (and keys) replaced by U+FFFD."""
    if isinstance(data, str):
        return data.replace("\x00", "\ufffd")
    if isinstance(data, list):
        return [without_nul(v) for v in data]
    if isinstance(data, dict):
        return {without_nul(k): without_nul(v) for k, v in data.items()}
    return data


def request_fields(body: dict[str, Any] | None) -> dict[str, Any]:
    """The parts of a request body the writer needs (no sampling parameters, no tools)."""
    if not body:
        return {}
    return {k: body[k] for k in ("model", "messages", "prompt", "input", "instructions") if k in body}
