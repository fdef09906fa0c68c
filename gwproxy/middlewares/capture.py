"""capture: attaches a ``Recorder`` to each chat request and hands its ``Record`` to the writer
once the response is over — finished, failed, or cut short by the client going away.

Skipped (nothing recorded) when capture is off in the configuration, for the user (an admin's
``PATCH /api/admin/users/{id}`` with ``capture: false``), for the request
(``X-Gwproxy-Capture: off``), or for an anonymous caller (auth off: there is no one to own the
conversation). The only work on the request path is the tee and one ``put_nowait``.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy.capture.record import CAPTURED_ROUTES, Record, Recorder, request_fields
from gwproxy.config import CaptureConfig
from gwproxy.errors import CLIENT_CLOSED, status_of
from gwproxy.keys import BODY, CAPTURE, PRINCIPAL, RECORDER, REQUEST_ID, TRACE


def capture_middleware(cfg: CaptureConfig) -> Middleware:
    @web.middleware
    async def capture(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not cfg.enabled or request.method != "POST" or request.path not in CAPTURED_ROUTES:
            return await handler(request)
        principal = request[PRINCIPAL]
        if not principal.capture or principal.via == "anonymous":
            return await handler(request)
        if request.headers.get("X-Gwproxy-Capture", "").strip().lower() in ("off", "false", "0", "no"):
            return await handler(request)
        recorder = request[RECORDER] = Recorder(cfg.max_bytes)
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
            trace = request[TRACE]
            ttft = trace.ttft()
            body = request.get(BODY)
            request.app[CAPTURE].submit(
                Record(
                    request_id=request[REQUEST_ID],
                    user_id=principal.user_id,
                    key_id=principal.key_id,
                    route=request.path,
                    status=status,
                    created_at=started,
                    request=request_fields(body),
                    response=recorder.body(),
                    sse=recorder.sse,
                    truncated=recorder.truncated,
                    model=body.get("model") if body and isinstance(body.get("model"), str) else None,
                    conversation_id=recorder.conversation_id or request.headers.get("X-Conversation-Id") or None,
                    create_conversation=recorder.create_conversation,
                    prompt_tokens=trace.prompt_tokens,
                    completion_tokens=trace.completion_tokens,
                    ttft_ms=None if ttft is None else round(ttft * 1000, 3),
                    duration_ms=round((time.perf_counter() - trace.started) * 1000, 3),
                )
            )

    return capture
