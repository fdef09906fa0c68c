"""errors: the one place where failures become responses — ``GatewayError`` and aiohttp's HTTP
exceptions as the OpenAI error envelope, anything unexpected as a logged 500 envelope."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy import log
from gwproxy.errors import GatewayError, error_response, render, render_http
from gwproxy.keys import REQUEST_ID

_log = log.get("gwproxy.errors")


def errors_middleware() -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            return render(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status in (404, 405):
                exc.text = f"{exc.reason}: {request.method} {request.path}"
            return render_http(exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("unhandled error", path=request.path)
            return error_response(
                500,
                f"The gateway failed to handle this request (request id {request.get(REQUEST_ID)})",
                "internal_error",
            )

    return errors
