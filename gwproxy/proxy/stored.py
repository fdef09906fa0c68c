"""Stored responses: which user may name a ``/v1/responses`` id, and which upstream holds it.

vLLM keeps a stored response (``store``, with ``VLLM_ENABLE_RESPONSES_API_STORE``) in the memory of
the server that made it and gives it to anyone who names its id: retrieval, input items, cancel,
and ``previous_response_id`` (a follow-up built on that conversation). The gateway therefore
records, for every response it relays, who asked for it and which upstream made it — in the
database, so that every replica knows, and before the client has seen the id. A request that names
a response is forwarded only for that user, to that upstream; for anyone else, and for an id the
gateway never recorded (made before it kept the record, or directly at vLLM), it answers vLLM's
own 404, so nobody learns whether someone else's id exists.

The book is a seam (``ResponseBook``): the proxy asks, ``store.responses`` keeps the rows.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from aiohttp import web

from gwproxy.errors import ResponseNotFound
from gwproxy.principal import Principal

RESPONSE_PATH = "/v1/responses/"
_RESPONSE_ID = re.compile(rb'"id": ?"(resp[A-Za-z0-9_-]{1,200})"')


class ResponseBook(Protocol):
    async def record(self, response_id: str, user_id: int | None, upstream: str) -> None:
        """Remember that ``user_id`` (None: the anonymous caller, auth off) made ``response_id`` on
        ``upstream``."""
        ...

    async def holder(self, response_id: str) -> tuple[int | None, str] | None:
        """(the owner, the upstream) of a recorded response, or None."""
        ...


def response_id(first: bytes) -> str | None:
    """The id of the response a ``/v1/responses`` answer opens with (vLLM's body, or its stream's
    ``response.created`` event, names it before anything else)."""
    found = _RESPONSE_ID.search(first, 0, 4096)
    return found.group(1).decode() if found else None


def owner_of(principal: Principal | None) -> int | None:
    """The owner a principal's responses are recorded under (None for the anonymous caller)."""
    return None if principal is None or principal.via == "anonymous" else principal.user_id


def named(request: web.Request, body: dict[str, Any] | None, responses: bool) -> str | None:
    """The stored response a request names: the id in ``/v1/responses/{id}[/…]`` (any method), or
    a ``/v1/responses`` body's ``previous_response_id``."""
    path = request.path
    if path.startswith(RESPONSE_PATH):
        return path[len(RESPONSE_PATH) :].partition("/")[0]
    if responses and body is not None:
        previous = body.get("previous_response_id")
        if previous is not None:
            return previous if isinstance(previous, str) else str(previous)
    return None


async def upstream_for(book: ResponseBook, response_id: str, principal: Principal | None) -> str:
    """The upstream holding ``response_id`` when ``principal`` owns it; else ``ResponseNotFound``."""
    found = await book.holder(response_id) if response_id else None
    if found is None or found[0] != owner_of(principal):
        raise ResponseNotFound(response_id)
    return found[1]
