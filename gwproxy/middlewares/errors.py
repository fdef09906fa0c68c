"""errors: the one place where failures become responses — ``GatewayError`` and aiohttp's HTTP
exceptions as the OpenAI error envelope, the database being unreachable (connection refused,
dropped or timed out, on any route that reads it) as 503 ``database_unavailable`` with
``Retry-After``, anything unexpected as a logged 500 envelope."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy import log
from gwproxy.errors import GatewayError, ServiceUnavailable, error_response, render, render_http
from gwproxy.keys import REQUEST_ID
from gwproxy.store.engine import database_away

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
        except Exception as exc:
            if database_away(exc):
                _log.warning("database unavailable", path=request.path, error=f"{type(exc).__name__}: {exc}")
                return render(
                    ServiceUnavailable(
                        "The database is unavailable right now; retry shortly", code="database_unavailable"
                    )
                )
            _log.exception("unhandled error", path=request.path)
            return error_response(
                500,
                f"The gateway failed to handle this request (request id {request.get(REQUEST_ID)})",
                "internal_error",
            )

    return errors
