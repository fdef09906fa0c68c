"""metrics: per-request counting, timing and in-flight gauge, plus the one access-log line.

Reads the request's ``Trace`` (which the proxy fills in) when the response is finished —
answered, failed or abandoned by the client (status 499) — and records it. Runs inside the errors
middleware, so a ``GatewayError`` passing through is counted with its own status.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy import log
from gwproxy.errors import CLIENT_CLOSED, status_of
from gwproxy.keys import EXCHANGE
from gwproxy.metrics import Metrics

_access = log.get("gwproxy.access")


def _route(request: web.Request) -> str:
    """The route label: the endpoint's for what the table names (proxied paths), else the
    matched route's pattern (bounded: never the raw path)."""
    endpoint = request[EXCHANGE].endpoint
    if endpoint.upstream or endpoint.forwards:
        return endpoint.route
    info = request.match_info.route.resource
    return "unmatched" if info is None else info.canonical


def metrics_middleware(metrics: Metrics) -> Middleware:
    @web.middleware
    async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
        trace = request[EXCHANGE].trace
        metrics.in_flight += 1
        status = 500
        try:
            resp = await handler(request)
            status = CLIENT_CLOSED if trace.upstream_error == "client_gone" else resp.status
            return resp
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        except Exception as exc:
            status = status_of(exc)
            raise
        finally:
            metrics.in_flight -= 1
            duration = time.perf_counter() - trace.started
            route = _route(request)
            model = trace.model or "-"
            metrics.observe_request(route, model, status, duration)
            exchange = request[EXCHANGE]
            if exchange.endpoint.upstream or exchange.endpoint.forwards:  # the console's tail: model traffic
                who = exchange.principal.username if exchange.principal else None
                metrics.recent.append((time.time(), request.method, route, model, status, duration, who))
            ttft = trace.ttft()
            if ttft is not None and trace.model:
                metrics.observe_ttft(model, ttft)
            metrics.count_tokens(model, trace.prompt_tokens, trace.completion_tokens)
            _access.info(
                "request",
                method=request.method,
                route=route,
                model=model,
                status=status,
                duration_ms=round(duration * 1000, 3),
                ttft_ms=None if ttft is None else round(ttft * 1000, 3),
                prompt_tokens=trace.prompt_tokens,
                completion_tokens=trace.completion_tokens,
                upstream_error=trace.upstream_error,
                upstream=trace.upstream,
            )

    return measure
