"""In flight: the model requests being answered now — who asked, what, for how long, how far the
answer has come — for the console and ``/api/requests``, each one cancellable.

The metrics middleware adds a request to a model (an upstream endpoint, or ``/api/chat``) when it
arrives and removes it when it ends. Cancelling one cancels its handler task: the relay closes the
upstream response on its way out, so vLLM aborts the generation and frees the GPU, as when a
client goes away; a stream the caller still reads is ended as vLLM ends an aborted request (a
finish event with ``finish_reason: "abort"``, then ``[DONE]``). Only the event loop reads or writes it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from gwproxy.principal import Principal
from gwproxy.trace import Trace


class Asker(Protocol):
    """Who a request acts for, once auth has said, and who cancelled it (the request's exchange)."""

    principal: Principal | None
    cancelled_by: str | None


@dataclass(slots=True)
class Running:
    id: str  # the gateway's own id of the request (unguessable, unique): what cancel names
    request_id: str  # the X-Request-ID the client sent or was given, for correlation
    task: asyncio.Task[Any]
    method: str
    route: str
    trace: Trace
    asker: Asker
    started: float = field(default_factory=time.time)  # wall-clock seconds

    @property
    def principal(self) -> Principal | None:
        return self.asker.principal

    @property
    def cancelled_by(self) -> str | None:
        return self.asker.cancelled_by

    def public(self) -> dict[str, Any]:
        t = self.trace
        return {
            "id": self.id,
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "model": t.model or "-",
            "user": self.principal.username if self.principal else None,
            "user_id": self.principal.user_id if self.principal else None,
            "age_s": round(time.time() - self.started, 3),
            "streaming": t.first_chunk is not None,
            "chunks": t.chunks,  # body reads relayed so far (a stream's events, about one a token)
            "cancelled_by": self.cancelled_by,
        }


class InFlight:
    def __init__(self) -> None:
        self.running: dict[str, Running] = {}

    def add(self, running: Running) -> None:
        self.running[running.id] = running

    def remove(self, request_id: str) -> None:
        self.running.pop(request_id, None)

    def visible(self, principal: Principal) -> list[Running]:
        """What ``principal`` may see: everything for an admin, else their own requests."""
        return [
            r
            for r in self.running.values()
            if principal.is_admin or (r.principal is not None and r.principal.user_id == principal.user_id)
        ]

    def cancel(self, request_id: str, principal: Principal) -> bool:
        """Cancel a request ``principal`` may see; False when there is no such request in flight."""
        found = self.running.get(request_id)
        if found is None or found not in self.visible(principal):
            return False
        found.asker.cancelled_by = principal.username  # the relay ends a stream as vLLM ends an abort
        found.task.cancel()
        return True
