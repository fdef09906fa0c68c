"""capture: attaches a ``Recorder`` (the exchange's tee) to each request to a ``captured`` endpoint
and hands its record (one wire line) to the writer
once the response is over — finished, failed, or cut short by the client going away.

Skipped (nothing recorded) when capture is off in the configuration, for the user (an admin's
``PATCH /api/admin/users/{id}`` with ``capture: false``), for the request
(``X-Gwproxy-Capture: off``), or for an anonymous caller (auth off: there is no one to own the
conversation). The work on the request path is the tee and one line's encoding (``record.wire``:
the request body goes in as it was sent, nothing parsed); the writer does the rest.

A record is keyed by an id minted here for it (128 random bits), never by the client's
``X-Request-ID``: the writer stores a key once, so a key a client could choose or predict would let
it suppress another user's turns or have its own repeated requests counted once. The client's id
stays what it is for: the response header, the upstream request and the log lines.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy.capture.record import Recorder, request_fields, wire
from gwproxy.config import CaptureConfig
from gwproxy.errors import CLIENT_CLOSED, status_of
from gwproxy.keys import CAPTURE, EXCHANGE


def capture_middleware(cfg: CaptureConfig) -> Middleware:
    @web.middleware
    async def capture(request: web.Request, handler: Handler) -> web.StreamResponse:
        exchange = request[EXCHANGE]
        if not cfg.enabled or not exchange.endpoint.captured or request.method != "POST":
            return await handler(request)
        principal = exchange.principal
        if principal is None or not principal.capture or principal.via == "anonymous":
            return await handler(request)
        if request.headers.get("X-Gwproxy-Capture", "").strip().lower() in ("off", "false", "0", "no"):
            return await handler(request)
        recorder = Recorder(cfg.max_bytes)
        exchange.tee = recorder
        started = time.time()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except Exception as exc:
            status = status_of(exc)
            raise
        except asyncio.CancelledError:  # the client went away: what it got so far is still a reply
            status = 200 if recorder.size else CLIENT_CLOSED
            raise
        finally:
            trace = exchange.trace
            body = exchange.sent  # what went upstream
            if body is None and exchange.body:  # refused before it went upstream: what was parsed
                body = orjson.dumps(request_fields(exchange.body))
            ttft = trace.ttft()
            line = wire(
                secrets.token_hex(16), principal.user_id, principal.key_id, request.path, status, started, body,
                recorder, recorder.conversation_id or request.headers.get("X-Conversation-Id") or None,
                trace.prompt_tokens, trace.completion_tokens, None if ttft is None else ttft * 1000,
                (time.perf_counter() - trace.started) * 1000,
            )  # fmt: skip
            request.app[CAPTURE].submit(line)

    return capture
