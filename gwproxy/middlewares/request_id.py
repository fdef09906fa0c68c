"""request_id: accept the client's ``X-Request-ID`` (if sane) or mint one, bind it to the log
context, and echo it on every response (through ``on_response_prepare``, so streamed and error
responses carry it too)."""

from __future__ import annotations

import re
import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy.keys import REQUEST_ID

_SANE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def request_id_middleware() -> Middleware:
    @web.middleware
    async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request.headers.get("X-Request-ID")
        if rid is None or _SANE.fullmatch(rid) is None:
            rid = uuid.uuid4().hex
        request[REQUEST_ID] = rid
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        return await handler(request)

    return request_id


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers["X-Request-ID"] = rid
