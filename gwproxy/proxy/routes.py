"""Routes: every ``/v1/*`` path and method (and vLLM's root extras) forwarded to the upstream.

The body is read once; a JSON body is parsed once, by the exchange (``Exchange.json``), checked
against the endpoint's schema, its model alias resolved and, for streams, the usage event asked
for. The original bytes are forwarded unless one of those edits was needed. A local endpoint
(``/api/chat``) forwards through ``through_gate`` with the body it built, to the endpoint it
stands for.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gwproxy.errors import UpstreamTimeout, UpstreamUnavailable
from gwproxy.keys import CONFIG, EXCHANGE, GATE, METRICS, REQUEST_ID, UPSTREAM
from gwproxy.proxy import usage
from gwproxy.proxy.endpoints import ROOT_PATHS, Endpoint
from gwproxy.proxy.exchange import Exchange
from gwproxy.proxy.relay import HOP_BY_HOP, relay
from gwproxy.proxy.usage import UsageTap
from gwproxy.proxy.watchdog import Watch

MODEL_CARD = "/v1/models/"  # one model's card: the alias in its path is resolved
# Client headers that never go upstream: hop-by-hop, recomputed, the gateway's credentials, or
# describing an encoding aiohttp already undid (the body read is the decoded one).
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "content-encoding", "authorization", "api-key", "x-api-key"}


def forward_headers(request: web.Request, auth: dict[str, str], request_id: str) -> CIMultiDict[str]:
    drop = _REQUEST_DROP
    connection = request.headers.get("Connection")
    if connection:
        drop = drop | {t.strip().lower() for t in connection.split(",")}
    headers = CIMultiDict([(k, v) for k, v in request.headers.items() if k.lower() not in drop])
    headers["X-Request-ID"] = request_id
    headers.update(auth)
    return headers


async def proxy(request: web.Request) -> web.StreamResponse:
    exchange = request[EXCHANGE]
    await exchange.json(request)  # parsed and checked (the limiter may have done it already)
    return await through_gate(request, exchange, exchange.endpoint)


async def through_gate(request: web.Request, exchange: Exchange, target: Endpoint) -> web.StreamResponse:
    """``forward``, counted in flight; while a model switch runs, first wait for it (bounded)."""
    gate = request.app[GATE]
    if not gate.is_open:  # wait before resolving names: "current" is the new model afterwards
        await gate.wait(request.app[CONFIG].switch.hold_seconds)
    gate.enter()
    try:
        return await forward(request, exchange, target)
    finally:
        gate.leave()


async def forward(request: web.Request, exchange: Exchange, target: Endpoint) -> web.StreamResponse:
    """Send the request upstream to ``target`` (the request's own endpoint, or the one a local
    endpoint such as /api/chat stands for, whose handler set ``exchange.body``) and relay the
    answer."""
    app = request.app
    cfg, registry, metrics = app[CONFIG], app[UPSTREAM], app[METRICS]
    trace = exchange.trace
    own = target is exchange.endpoint
    body = await request.read() if own and request.body_exists else b""  # cached by aiohttp
    parsed = exchange.body
    tap: UsageTap | None = None
    if parsed is not None:
        if not own and target.schema is not None:
            target.schema(parsed)  # what a local endpoint built must pass as the client's would
        rewrite = not own
        model = parsed.get("model")
        if isinstance(model, str):
            served = registry.resolve(model)
            if served != model:
                parsed["model"] = served
                rewrite = True
            trace.model = registry.label(served)
        elif model is None:  # vLLM answers with the model it serves: the request is "current"'s
            trace.model = registry.label(registry.state.models[0] if registry.state.models else None)
        if target.usage:
            sse = usage.streams(parsed)
            if target.responses:
                tap = UsageTap(sse=sse, strip=False, responses=True)
            else:
                inject = usage.wants_injection(parsed)
                if inject:
                    usage.inject(parsed)
                    rewrite = True
                tap = UsageTap(sse=sse, strip=inject)
        if rewrite:
            body = orjson.dumps(parsed)
        exchange.sent = body  # what capture stores is what went upstream
    # The path as sent, query included (from the parsed target: an absolute-form target's scheme
    # and host are not the upstream's), or the endpoint a gateway route stands for.
    if own:
        query = request.rel_url.raw_query_string
        raw_path = request.rel_url.raw_path
        if request.method == "GET" and raw_path.startswith(MODEL_CARD):  # models.retrieve("current")
            name = request.path[len(MODEL_CARD) :]
            served = registry.resolve(name)
            if served != name:
                raw_path = MODEL_CARD + quote(served, safe="/")
            trace.model = registry.label(served)
        url = URL(registry.origin + raw_path + ("?" + query if query else ""), encoded=True)
    else:
        url = URL(registry.origin + target.path)
    headers = forward_headers(request, registry.auth_headers, request[REQUEST_ID])
    trace.upstream_started = time.perf_counter()
    watchdog = registry.watchdog
    watch = watchdog.watch(asyncio.current_task(), cfg.upstream.first_byte_timeout)
    try:
        upstream = await _send(request, url, body, headers, watch)
        extra = {}
        if cfg.proxy.overhead_header:
            # Time spent before the request went upstream; relaying after that is a copy per chunk.
            overhead = trace.upstream_started - trace.started
            extra["x-gwproxy-overhead-ms"] = f"{overhead * 1000:.3f}"
            metrics.observe_overhead(overhead)
        watch.follow(upstream, cfg.upstream.idle_timeout)
        try:
            return await relay(request, upstream, trace, tap, exchange.tee, watch, metrics, extra)
        finally:
            upstream.release()
            if tap is not None:
                trace.stream_events = tap.events
                if tap.usage is not None:
                    trace.prompt_tokens, trace.completion_tokens = tap.usage
    finally:
        watchdog.release(watch)


async def _send(
    request: web.Request, url: URL, body: bytes, headers: CIMultiDict[str], watch: Watch
) -> aiohttp.ClientResponse:
    """Send the request upstream and wait for the response headers; failures as gateway errors."""
    registry, metrics = request.app[UPSTREAM], request.app[METRICS]
    try:
        return await registry.session.request(
            request.method, url, data=body or None, headers=headers, allow_redirects=False
        )
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not watch.expired or task is None:
            raise  # the client went away
        task.uncancel()
        metrics.count_upstream_error("timeout")
        raise UpstreamTimeout(f"The upstream {registry.public_origin} did not answer within {watch.limit:g}s") from None
    except aiohttp.ServerTimeoutError:
        metrics.count_upstream_error("timeout")
        raise UpstreamTimeout(f"Connecting to the upstream {registry.public_origin} timed out") from None
    except aiohttp.ClientConnectorError as exc:
        metrics.count_upstream_error("refused")
        raise UpstreamUnavailable(
            f"The upstream {registry.public_origin} is unreachable ({exc.os_error.strerror or exc}); "
            "is vLLM running and loaded?"
        ) from None
    except aiohttp.ClientError as exc:
        metrics.count_upstream_error("disconnected")
        raise UpstreamUnavailable(
            f"The upstream {registry.public_origin} failed before answering: {type(exc).__name__}"
        ) from None


# Explicit methods rather than "*": OPTIONS stays free for CORS preflights, answered here.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def add_routes(app: web.Application) -> None:
    for method in METHODS:
        app.router.add_route(method, "/v1/{tail:.*}", proxy)
        for path in ROOT_PATHS:
            app.router.add_route(method, path, proxy)
