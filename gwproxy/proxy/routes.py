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
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from sqlalchemy.exc import SQLAlchemyError
from yarl import URL

from gwproxy import log
from gwproxy.errors import GatewayError, ModelNotAllowed, UpstreamTimeout, UpstreamUnavailable, envelope
from gwproxy.keys import CONFIG, EXCHANGE, GATE, METRICS, RESPONSES, UPSTREAM
from gwproxy.principal import Principal
from gwproxy.proxy import stored, usage
from gwproxy.proxy.endpoints import ROOT_PATHS, Endpoint
from gwproxy.proxy.exchange import Exchange
from gwproxy.proxy.registry import Loader, UpstreamRegistry
from gwproxy.proxy.relay import HOP_BY_HOP, relay
from gwproxy.proxy.upstream import Upstream
from gwproxy.proxy.usage import UsageTap
from gwproxy.proxy.watchdog import Watch
from gwproxy.trace import Trace

_log = log.get("gwproxy.proxy")

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
    """``forward``; a request for the switched model is counted in flight and, while a switch of
    it runs, first waits for it (bounded). Requests for other models pass untouched."""
    gate = request.app[GATE]
    model = exchange.body.get("model") if exchange.body is not None else None
    if not gate.covers(model if isinstance(model, str) else None):
        return await forward(request, exchange, target)
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
    answer. The upstream is one of the replicas serving the model the body names (or the path,
    for a model card), picked by the balancer; a replica that refuses, drops the connection or
    answers 502/503 before anything reached the client is replaced by another, once."""
    app = request.app
    cfg, registry, metrics = app[CONFIG], app[UPSTREAM], app[METRICS]
    trace = exchange.trace
    principal = exchange.principal
    own = target is exchange.endpoint
    body = await request.read() if own and request.body_exists else b""  # cached by aiohttp
    parsed = exchange.body
    tap: UsageTap | None = None
    asked: str | None = None  # the model the request names, and what it stands for
    served: str | None = None
    committed: web.StreamResponse | None = None  # already sent to the client (loading feedback)
    if parsed is not None:
        if not own and target.schema is not None:
            target.schema(parsed)  # what a local endpoint built must pass as the client's would
        rewrite = not own
        model = parsed.get("model")
        if isinstance(model, str):
            asked = model
            served = registry.resolve(model)
            if served != model:
                parsed["model"] = served
                rewrite = True
        elif model is None:  # vLLM answers with the model it serves: the request is "current"'s
            trace.model = registry.label(registry.state.models[0] if registry.state.models else None)
            if principal is not None and principal.models is not None:
                asked = "current"
                served = registry.resolve(asked)
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
        if request.method == "GET":
            if raw_path.startswith(MODEL_CARD):  # models.retrieve("current")
                asked = request.path[len(MODEL_CARD) :]
                served = registry.resolve(asked)
                if served != asked:
                    raw_path = MODEL_CARD + quote(served, safe="/")
            elif raw_path == "/v1/models" and (
                registry.several or registry.loader is not None or (principal is not None and principal.models)
            ):
                return model_list(registry, principal)
        path = raw_path + ("?" + query if query else "")
    else:
        path = target.path
    if served is not None:
        assert asked is not None
        if principal is not None and not principal.may_use(asked, served):
            allowed = ", ".join(sorted(principal.models or ()))
            said = f"This credential may not use the model `{asked}`; it may use: {allowed}"
            raise ModelNotAllowed(said, param="model")
        trace.model = registry.label(served)
        loader = registry.loader
        if (
            loader is not None
            and cfg.switch.loading_feedback
            and parsed is not None
            and usage.streams(parsed)
            and not registry.serving(served)
            and loader.loadable(served)
        ):
            feedback, found = await _wait_with_feedback(request, registry, loader, served, trace)
            if found is None:
                return feedback  # the load failed or was refused: said in the stream
            committed = feedback
            group = found
        else:
            group = await registry.group_for(served, principal, lambda: _gone(request))
        if trace.model == "other":  # loaded on demand just now
            trace.model = registry.label(served)
    else:
        group = registry.default_group()
    response = stored.named(request, parsed, target.responses) if own else None
    if response is not None:  # a stored response: its owner only, on the upstream holding it
        holder = await stored.upstream_for(app[RESPONSES], response, principal)
        group = next(((u,) for u in registry.upstreams if u.name == holder), group)
    # A /v1/responses answer vLLM stores: its id is read from the first chunk and recorded.
    learn = target.responses and request.method == "POST" and not (parsed and parsed.get("store") is False)
    trace.upstream_started = time.perf_counter()
    watchdog = registry.watchdog
    watch = watchdog.watch(asyncio.current_task(), cfg.upstream.first_byte_timeout)
    try:
        try:
            chosen, upstream, first = await _open(request, group, parsed, path, body, watch, learn)
        except GatewayError as exc:
            if committed is None:
                raise
            return await _end_with_error(committed, exc, trace)
        trace.upstream = chosen.name
        if learn and upstream.status == 200 and first and (made := stored.response_id(first)):
            await _record(app, made, stored.owner_of(principal), chosen.name)
        extra = {}
        if cfg.proxy.overhead_header:
            # Time spent before the request went upstream; relaying after that is a copy per chunk.
            overhead = trace.upstream_started - trace.started
            extra["x-gwproxy-overhead-ms"] = f"{overhead * 1000:.3f}"
            metrics.observe_overhead(overhead)
        watch.follow(upstream, cfg.upstream.idle_timeout)
        try:
            return await relay(request, upstream, trace, tap, exchange.tee, watch, metrics, extra, first, committed)
        finally:
            upstream.release()
            chosen.in_flight -= 1
            chosen.last_used = time.monotonic()
            if trace.upstream_error in MID_RESPONSE_FAILURES:
                chosen.failed(trace.upstream_error)  # a replica dying mid-stream is out sooner
            if tap is not None:
                trace.stream_events = tap.events
                if tap.usage is not None:
                    trace.prompt_tokens, trace.completion_tokens = tap.usage
    finally:
        watchdog.release(watch)


async def _record(app: web.Application, response_id: str, owner: int | None, upstream: str) -> None:
    """Record a stored response's owner before the client sees its id. The database away: the
    answer still goes out (a later request naming the id is refused, never someone else's)."""
    try:
        await app[RESPONSES].record(response_id, owner, upstream)
    except (SQLAlchemyError, OSError) as exc:
        _log.warning("stored response not recorded", error=f"{type(exc).__name__}: {exc}")


FEEDBACK_SECONDS = 1.0  # between two comments while a stream waits for its model to load


async def _wait_with_feedback(
    request: web.Request, registry: UpstreamRegistry, loader: Loader, served: str, trace: Trace
) -> tuple[web.StreamResponse, tuple[Upstream, ...] | None]:
    """``switch.loading_feedback``: commit a 200 event stream now and, while the model loads, send
    an SSE comment (which OpenAI SDKs skip) every ``FEEDBACK_SECONDS`` with the phase and the
    requests waiting. Returns the response and the replicas once loaded; a load that fails or is
    refused ends the stream with an error event (vLLM's format) and ``[DONE]`` — group None."""
    resp = web.StreamResponse(
        status=200,
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
                 "X-Accel-Buffering": "no"},
    )  # fmt: skip
    await resp.prepare(request)
    exchange = request[EXCHANGE]
    waiting = asyncio.ensure_future(registry.group_for(served, exchange.principal, lambda: _gone(request)))
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=FEEDBACK_SECONDS)
            if done:
                return resp, waiting.result()
            await resp.write(b": gwproxy " + loader.progress(served).encode() + b"\n\n")
    except GatewayError as exc:
        return await _end_with_error(resp, exc, trace), None
    finally:
        if not waiting.done():
            waiting.cancel()


async def _end_with_error(resp: web.StreamResponse, exc: GatewayError, trace: Trace) -> web.StreamResponse:
    """End a committed event stream with the error as an event (vLLM's format) and ``[DONE]``."""
    trace.upstream_error = str(exc.code or exc.type)
    await resp.write(b"data: " + envelope(exc.message, exc.type, exc.param, exc.code) + b"\n\ndata: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _gone(request: web.Request) -> bool:
    """Whether the client has left (its connection closed)."""
    return request.transport is None or request.transport.is_closing()


MID_RESPONSE_FAILURES = frozenset({"disconnected", "idle_timeout"})
RETRIED_STATUSES = frozenset({502, 503})


def model_list(registry: UpstreamRegistry, principal: Principal | None) -> web.Response:
    """``/v1/models`` across every upstream, in vLLM's shape: each served model's card once,
    only those the caller may name."""
    cards = registry.cards()
    if principal is not None and principal.models is not None:
        cards = [c for c in cards if principal.may_use(str(c["id"]))]
    return web.Response(body=orjson.dumps({"object": "list", "data": cards}), content_type="application/json")


class _Failed(Exception):
    """A send that got no answer: the gateway error to answer with, and whether another replica
    may be tried (nothing was answered: refused, dropped, or the connection timed out)."""

    def __init__(self, error: GatewayError, retry: bool) -> None:
        self.error = error
        self.retry = retry


async def _open(
    request: web.Request,
    group: tuple[Upstream, ...],
    parsed: dict[str, Any] | None,
    path: str,
    body: bytes,
    watch: Watch,
    learn: bool = False,
) -> tuple[Upstream, aiohttp.ClientResponse, bytes | None]:
    """Send to the replica the balancer picks and wait for its response headers (and, while
    another replica could take over or with ``learn``, its first chunk); on a refusal, a dropped
    connection or a 502/503, once more to another replica of the group when there is one. The
    chosen upstream is counted in flight (the caller uncounts it); the chunk read early, if any,
    is returned."""
    registry = request.app[UPSTREAM]
    chosen = registry.balancer.pick(group, parsed)
    assert chosen is not None
    for attempt in (0, 1):
        url = URL(chosen.origin + path, encoded=True)
        headers = forward_headers(request, chosen.auth, request[EXCHANGE].id)
        chosen.in_flight += 1
        chosen.requests += 1
        peek = learn or (attempt == 0 and len(group) > 1)
        try:
            response, first = await _send(request, chosen, url, body, headers, watch, peek)
        except _Failed as failed:
            chosen.in_flight -= 1
            other = registry.balancer.pick(group, parsed, tried=chosen) if failed.retry and attempt == 0 else None
            if other is None:
                raise failed.error from None
            _log.info("retrying on another replica", upstream=chosen.name, to=other.name, error=failed.error.message)
            chosen = other
            watch.last = time.monotonic()
            continue
        if response.status not in RETRIED_STATUSES:
            chosen.succeeded()
            return chosen, response, first
        chosen.failed(f"status_{response.status}")
        other = registry.balancer.pick(group, parsed, tried=chosen) if attempt == 0 else None
        if other is None:
            return chosen, response, first  # the answer as it is: nothing better to offer
        _log.info("retrying on another replica", upstream=chosen.name, to=other.name, status=response.status)
        response.release()
        chosen.in_flight -= 1
        chosen = other
        watch.last = time.monotonic()
    raise AssertionError("unreachable")  # pragma: no cover


async def _send(
    request: web.Request,
    chosen: Upstream,
    url: URL,
    body: bytes,
    headers: CIMultiDict[str],
    watch: Watch,
    peek: bool,
) -> tuple[aiohttp.ClientResponse, bytes | None]:
    """Send the request to ``chosen`` and wait for the response headers — and, with ``peek``,
    for a 200's first body chunk too (vLLM sends a stream's headers at once: a replica dying
    during prefill would otherwise cost a stream that has not begun). A failure is counted (on
    the upstream's health too) and raised as ``_Failed``."""
    metrics = request.app[METRICS]
    response: aiohttp.ClientResponse | None = None
    try:
        response = await request.app[UPSTREAM].session.request(
            request.method, url, data=body or None, headers=headers, allow_redirects=False
        )
        if peek and response.status == 200:
            return response, await response.content.readany()
        return response, None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not watch.expired or task is None:
            raise  # the client went away
        task.uncancel()
        kind, retry = "timeout", False
        error: GatewayError = UpstreamTimeout(
            f"The upstream {chosen.public_origin} did not answer within {watch.limit:g}s"
        )
    except aiohttp.ServerTimeoutError:
        kind, retry = "timeout", True
        error = UpstreamTimeout(f"Connecting to the upstream {chosen.public_origin} timed out")
    except aiohttp.ClientConnectorError as exc:
        kind, retry = "refused", True
        error = UpstreamUnavailable(
            f"The upstream {chosen.public_origin} is unreachable ({exc.os_error.strerror or exc}); "
            "is vLLM running and loaded?"
        )
    except aiohttp.ClientError as exc:
        kind, retry = "disconnected", True
        error = UpstreamUnavailable(
            f"The upstream {chosen.public_origin} failed before answering: {type(exc).__name__}"
        )
    if response is not None:
        response.close()
    metrics.count_upstream_error(kind)
    chosen.failed(kind)
    raise _Failed(error, retry)


# Explicit methods rather than "*": OPTIONS stays free for CORS preflights, answered here.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def add_routes(app: web.Application) -> None:
    for method in METHODS:
        app.router.add_route(method, "/v1/{tail:.*}", proxy)
        for path in ROOT_PATHS:
            app.router.add_route(method, path, proxy)
