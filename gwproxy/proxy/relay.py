"""Relay: upstream response bytes to the client, unchanged, chunk for chunk, as they arrive.

Contract:
- every upstream read is written to the client before the next read starts (no buffering);
- status, ``Content-Type`` and end-to-end headers are kept; hop-by-hop headers are dropped;
  SSE responses get ``X-Accel-Buffering: no``;
- the only edit is the ``UsageTap``'s removal of the usage event the gateway itself asked for;
- each chunk the client gets is also handed to the exchange's ``Tee`` when there is one (capture);
- the client going away (a failed write, or the handler cancelled) closes the upstream
  response at once, so vLLM aborts the generation; a stream an admin cancels (the console) is
  ended for its caller as vLLM ends an aborted request (``finish_reason: "abort"``, ``[DONE]``);
- the upstream failing mid-body (died, silent for ``first_byte_timeout`` before its first chunk
  or for ``idle_timeout`` between two chunks) ends an SSE stream with
  an error event in vLLM's format followed by ``data: [DONE]`` (silence is detected by the
  ``Watchdog``, not a timer per read); a plain body is cut off, so the
  client sees an incomplete response rather than a truncated one that looks whole.

An event stream is pumped in a task of its own, which the handler awaits once: each chunk then
resumes two frames (the pump's and the read's) rather than the handler's whole chain of
middlewares (``bench/streams.py`` measured about 7 % less CPU per chunk). Cancelling the handler
— the client gone, the console's cancel, shutdown — cancels the pump with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gwproxy import log
from gwproxy.errors import envelope
from gwproxy.keys import EXCHANGE
from gwproxy.metrics import Metrics
from gwproxy.proxy.exchange import Tee
from gwproxy.proxy.usage import UsageTap
from gwproxy.proxy.watchdog import UpstreamIdle, Watch
from gwproxy.trace import Trace

_log = log.get("gwproxy.relay")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by aiohttp itself for the response it writes.
_RESPONSE_OWN = HOP_BY_HOP | {"date", "server", "content-length"}


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Connection", "")
    return {t.strip().lower() for t in value.split(",") if t.strip()} if value else set()


def response_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    drop = _RESPONSE_OWN | _connection_tokens(upstream)
    return CIMultiDict((k, v) for k, v in upstream.items() if k.lower() not in drop)


def _sse_error(message: str, code: int) -> bytes:
    return b"data: " + envelope(message, "upstream_error", None, code) + b"\n\ndata: [DONE]\n\n"


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    trace: Trace,
    tap: UsageTap | None,
    tee: Tee | None,
    watch: Watch,
    metrics: Metrics,
    extra_headers: Mapping[str, str],
    first: bytes | None = None,
    committed: web.StreamResponse | None = None,
) -> web.StreamResponse:
    """Relay ``upstream``'s answer; ``first``, when given, is its first body chunk, already read.
    ``committed``: an SSE response already sent to the client (loading feedback): the upstream's
    events go on in it, and an upstream error becomes an error event."""
    if committed is not None:
        return await _relay_into(request, upstream, trace, tap, tee, watch, metrics, first, committed)
    headers = response_headers(upstream.headers)
    sse = upstream.content_type == "text/event-stream"
    if sse:
        headers["X-Accel-Buffering"] = "no"
    if tee is not None:
        tee.sse = sse
    headers.update(extra_headers)
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    length = upstream.content_length
    if length is not None and (tap is None or not tap.strip):
        resp.content_length = length
    pump = _pump(request, upstream, trace, tap, tee, watch, metrics, first, resp, sse, prepare=True)
    return await (asyncio.ensure_future(pump) if sse else pump)  # a stream: in its own task (see above)


async def _relay_into(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    trace: Trace,
    tap: UsageTap | None,
    tee: Tee | None,
    watch: Watch,
    metrics: Metrics,
    first: bytes | None,
    resp: web.StreamResponse,
) -> web.StreamResponse:
    if tee is not None:
        tee.sse = True
    if upstream.status != 200 or upstream.content_type != "text/event-stream":
        raw = (first or b"") + await upstream.read()
        try:
            message = str(orjson.loads(raw)["error"]["message"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = raw.decode(errors="replace")[:1000]
        trace.upstream_error = f"status_{upstream.status}"
        await resp.write(_sse_error(message, upstream.status))
        await resp.write_eof()
        return resp
    return await _pump(request, upstream, trace, tap, tee, watch, metrics, first, resp, True)


async def _pump(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    trace: Trace,
    tap: UsageTap | None,
    tee: Tee | None,
    watch: Watch,
    metrics: Metrics,
    first: bytes | None,
    resp: web.StreamResponse,
    sse: bool,
    prepare: bool = False,
) -> web.StreamResponse:
    """Send ``resp``'s headers (``prepare``), then copy the body to it, chunk by chunk."""
    done = False
    try:
        if prepare:
            await resp.prepare(request)
        pending = first
        while True:
            try:
                if pending is None:
                    chunk = await upstream.content.readany()
                else:
                    chunk, pending = pending, None
            except UpstreamIdle:
                waited = "its first chunk" if trace.first_chunk is None else "the next chunk"
                await _write_held(tap, tee, resp)
                return await _fail(
                    request, resp, sse, trace, metrics, "idle_timeout",
                    f"upstream sent nothing for {watch.limit:g}s waiting for {waited}", 504,
                )  # fmt: skip
            except aiohttp.ClientError:
                await _write_held(tap, tee, resp)
                return await _fail(
                    request, resp, sse, trace, metrics, "disconnected",
                    "upstream closed the connection mid-response", 502,
                )  # fmt: skip
            if not chunk:
                break
            watch.last = now = time.monotonic()
            trace.chunks += 1
            if trace.first_chunk is None:
                trace.first_chunk = now
                watch.first_chunk()
            if tap is not None:
                chunk = tap.feed(chunk)
                if not chunk:
                    continue
            if tee is not None:
                tee.feed(chunk)  # what the client gets, for capture (bounded)
            await resp.write(chunk)
        if tap is not None:
            held = tap.finish()
            if held:
                if tee is not None:
                    tee.feed(held)
                await resp.write(held)
        await resp.write_eof()
        done = True
        return resp
    except (aiohttp.ClientConnectionResetError, ConnectionResetError):
        trace.upstream_error = "client_gone"
        return resp
    except asyncio.CancelledError:
        exchange = request[EXCHANGE]
        if not (sse and exchange.cancelled_by and tap is not None and resp.prepared):
            raise  # the client went away, or shutdown: nobody to tell
        upstream.close()  # vLLM aborts the generation now
        done = await _end_aborted(request, resp, tap, tee, trace)
        return resp
    finally:
        if not done:
            upstream.close()  # client gone or upstream broken: abort the generation now


async def _end_aborted(
    request: web.Request, resp: web.StreamResponse, tap: UsageTap, tee: Tee | None, trace: Trace
) -> bool:
    """An admin cancelled the stream (the console's cancel): end it for its caller as vLLM ends an
    aborted request — what was held back, a finish event per choice with ``finish_reason:
    "abort"``, ``[DONE]`` — instead of a cut connection. The pump carries on uncancelled for that."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    trace.upstream_error = "cancelled"
    body = request[EXCHANGE].body or {}
    n = body.get("n")
    end = tap.release() + tap.aborted(n if type(n) is int and 0 < n <= 128 else 1)
    try:
        if tee is not None:
            tee.feed(end)
        await resp.write(end)
        await resp.write_eof()
    except (aiohttp.ClientConnectionResetError, ConnectionResetError):
        trace.upstream_error = "client_gone"
    return True


async def _write_held(tap: UsageTap | None, tee: Tee | None, resp: web.StreamResponse) -> None:
    """Send the whole events the usage tap was holding (a stream breaking off after a finish)."""
    held = tap.release() if tap is not None else b""
    if held:
        if tee is not None:
            tee.feed(held)
        await resp.write(held)


async def _fail(
    request: web.Request,
    resp: web.StreamResponse,
    sse: bool,
    trace: Trace,
    metrics: Metrics,
    kind: str,
    message: str,
    code: int,
) -> web.StreamResponse:
    trace.upstream_error = kind
    metrics.count_upstream_error(kind)
    _log.warning("upstream failed mid-response", kind=kind, route=request[EXCHANGE].endpoint.route)
    if sse:
        await resp.write(_sse_error(message, code))
        await resp.write_eof()
    elif request.transport is not None:
        request.transport.close()  # an incomplete body the client can tell from a whole one
    return resp
