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
from gwproxy.inflight import InFlight, Running
from gwproxy.keys import EXCHANGE, REQUEST_ID
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


def metrics_middleware(metrics: Metrics, inflight: InFlight) -> Middleware:
    @web.middleware
    async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
        exchange = request[EXCHANGE]
        trace = exchange.trace
        metrics.in_flight += 1
        model_request = exchange.endpoint.upstream or exchange.endpoint.forwards
        if model_request:  # listed (and cancellable) while it runs: /api/requests
            task = asyncio.current_task()
            if task is not None:
                inflight.add(Running(exchange.id, request[REQUEST_ID], task, request.method, exchange.endpoint.route,
                                     trace, exchange))  # fmt: skip
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
            if model_request:
                inflight.remove(exchange.id)
            duration = time.perf_counter() - trace.started
            route = _route(request)
            model = trace.model or "-"
            metrics.observe_request(route, model, status, duration)
            if model_request:  # the console's tail: model traffic
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
                upstream_id=exchange.id if trace.upstream else None,  # vLLM's request id (its logs, its ids)
            )

    return measure
