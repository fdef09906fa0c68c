"""Exchange: one request as every layer sees it, built once at the edge.

The request-id middleware makes it (``open_exchange``): the endpoint the path stands for (see
``endpoints``), the request's ``Trace`` and its ``id`` — 128 random bits minted for every request,
the id the gateway sends upstream as ``X-Request-ID`` (vLLM builds its response ids from it:
``chatcmpl-…``, ``resp_…``) and keys the request by while it runs. A client's own ``X-Request-ID``
is echoed to it and logged, never sent upstream: ids another user could guess or choose would name
(or overwrite, in vLLM's response store) someone else's response. The layers then fill in what only they know — the
principal (auth), the tee (capture's recorder) — and read the rest. The body is read and parsed
by one reader, ``Exchange.json``: the first layer that needs it (the limiter's token estimate,
else the proxy) parses it and checks it against the endpoint's schema; everyone after gets the
same dict. A local endpoint that builds the upstream body itself (``/api/chat``) sets ``body``;
what went upstream, after the gateway's own edits, is ``sent``.

The relay hands each chunk the client gets to ``tee``, a ``Tee``: a protocol defined here, so the
hot path needs nothing from the capture package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from gwproxy.bodies import parse_object
from gwproxy.principal import Principal
from gwproxy.proxy.endpoints import Endpoint, lookup
from gwproxy.trace import Trace


class Tee(Protocol):
    """Also receives every chunk the client is sent (bounded by its owner)."""

    sse: bool

    def feed(self, chunk: bytes) -> None: ...


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


@dataclass(slots=True)
class Exchange:
    endpoint: Endpoint
    trace: Trace
    id: str  # minted here, unguessable: what goes upstream as X-Request-ID
    principal: Principal | None = None
    body: dict[str, Any] | None = None  # the JSON body, parsed once and checked
    sent: bytes | None = None  # the body as it went upstream (the gateway may have edited it)
    tee: Tee | None = None
    cancelled_by: str | None = None  # who cancelled it while it ran (the console's cancel)
    _read: bool = False
    _checked: bool = False

    async def json(self, request: web.Request, *, check: bool = True) -> dict[str, Any] | None:
        """The request's JSON body, parsed on the first call (None for a body that is not JSON by
        the endpoint or the Content-Type, or none) and, unless ``check`` is false, checked against
        the endpoint's schema once. The limiter reads it unchecked (a refused body is refused
        inside capture, which records it); the proxy checks it."""
        if not self._read:
            self._read = True
            if (
                self.body is None
                and request.method == "POST"
                and (self.endpoint.json or _is_json(request.content_type))
            ):
                raw = await request.read()  # aiohttp caches it: the proxy's read is free
                if raw:
                    self.body = parse_object(raw)
        if check and not self._checked and self.body is not None:
            self._checked = True
            if self.endpoint.schema is not None:
                self.endpoint.schema(self.body)
        return self.body


def open_exchange(request: web.Request, started: float) -> Exchange:
    return Exchange(lookup(request.path), Trace(started=started), os.urandom(16).hex())
