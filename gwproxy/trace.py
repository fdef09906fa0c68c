"""Trace: what one request taught the gateway, for its metrics and its access-log line.

The metrics middleware creates a ``Trace`` per request; the proxy fills in what only it knows
(model, time to first byte, upstream time, tokens). Times are ``time.perf_counter()`` seconds
(uvloop's ``loop.time()`` only has millisecond resolution).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Trace:
    started: float
    model: str | None = None
    upstream_started: float | None = None
    first_chunk: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream_events: int = 0  # SSE events relayed (a measure of progress when usage never came)
    upstream_error: str | None = None
    upstream: str | None = None  # the name of the upstream that answered
    chunks: int = 0  # body chunks relayed so far (how far an answer has come, for /api/requests)

    def ttft(self) -> float | None:
        """Seconds from the request's arrival to the first body bytes from the upstream."""
        return None if self.first_chunk is None else self.first_chunk - self.started
