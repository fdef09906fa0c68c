"""request_id: open the request's ``Exchange`` (its endpoint, looked up once, and its trace), accept
the client's ``X-Request-ID`` or mint one, make it the log context of everything the request
does, and echo it on every response (through ``on_response_prepare``, so
streamed and error responses carry it too). A client's id is kept as sent — base64, spaces,
non-ASCII — up to ``MAX_ID`` characters (a longer one is replaced); one with a control character is
refused (400). It is the client's, for correlation: upstream goes the exchange's own id (see
``proxy.exchange``), which is also the request id of a client that sent none — 128 random bits, so
no id the gateway shows one user lets another name, guess or overwrite it.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy import log
from gwproxy.errors import InvalidRequest, render
from gwproxy.keys import EXCHANGE, REQUEST_ID, RESPONSE_HEADERS
from gwproxy.proxy.exchange import open_exchange

MAX_ID = 1024


def request_id_middleware() -> Middleware:
    @web.middleware
    async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
        exchange = request[EXCHANGE] = open_exchange(request, time.perf_counter())
        rid = request.headers.get("X-Request-ID")
        if rid is not None and not rid.isprintable():
            return render(InvalidRequest("X-Request-ID must not contain control characters", param="X-Request-ID"))
        if not rid or len(rid) > MAX_ID:
            rid = exchange.id
        request[REQUEST_ID] = rid
        log.REQUEST_ID.set(rid)
        return await handler(request)

    return request_id


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The headers every response gets: the request id, the headers other layers left in
    ``request[RESPONSE_HEADERS]`` (rate limits, ``/api/chat``'s conversation id), and
    ``X-Content-Type-Options: nosniff`` (no browser guesses a type for what the
    gateway serves: an exported conversation, an upstream's error page)."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-ID"] = rid
    extra = request.get(RESPONSE_HEADERS)
    if extra:
        response.headers.update(extra)
