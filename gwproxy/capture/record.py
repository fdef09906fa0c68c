"""Record: what one captured request leaves for the writer, and the recorder that gathers it.

The ``Recorder`` is attached to the request by the capture middleware; the relay tees every
chunk it sends the client into ``feed`` (a list append, up to ``limit`` bytes, then only a
count). When the response is over the middleware turns it into a ``Record`` — plain data that
survives a trip through the disk spool as one JSON line — and hands it to the writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

CAPTURED_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/api/chat"})


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
        return cls(**orjson.loads(raw))


class RecordSink(Protocol):
    """Where the capture middleware hands records: the writer, or the courier to its process."""

    def submit(self, record: Record) -> None: ...


class Recorder:
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


def request_fields(body: dict[str, Any] | None) -> dict[str, Any]:
    """The parts of a request body the writer needs (no sampling parameters, no tools)."""
    if not body:
        return {}
    return {k: body[k] for k in ("model", "messages", "prompt") if k in body}
