"""Routes: ``/ui`` (the console page and its files), ``GET /api/stats`` (what its dashboard
polls: the gateway's own counters by model and the latest requests) and ``/api/requests`` (the
model requests in flight, each cancellable).

The page's files are read from the package once and served with a Content-Security-Policy that
allows only the gateway's own scripts, styles and API (no inline script, no CDN),
``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff`` and no caching of the HTML. The page
signs in through ``/api/auth/login`` and keeps its tokens in sessionStorage; it needs nothing the
API does not document.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web
from marshmallow import Schema, fields

from gwproxy.bodies import json
from gwproxy.errors import NotFound
from gwproxy.keys import INFLIGHT, METRICS, PRINCIPAL
from gwproxy.operations import Access, operation

FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_CACHE: dict[str, bytes] = {}


def _file(name: str) -> bytes:
    if name not in _CACHE:
        _CACHE[name] = resources.files("gwproxy.console").joinpath("static", name).read_bytes()
    return _CACHE[name]


async def page(request: web.Request) -> web.Response:
    """``/ui`` and ``/ui/``: the console (one page; it routes by the URL's fragment)."""
    if request.path == "/ui":
        raise web.HTTPFound("/ui/")
    return web.Response(body=_file("index.html"), headers={**SECURITY_HEADERS, "Content-Type": FILES["index.html"],
                                                             "Cache-Control": "no-store"})  # fmt: skip


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES or name == "index.html":
        raise NotFound(f"no console file {name!r}")
    return web.Response(body=_file(name), headers={**SECURITY_HEADERS, "Content-Type": FILES[name],
                                                   "Cache-Control": "no-cache"})  # fmt: skip


class ModelStats(Schema):
    model = fields.String(required=True)
    requests = fields.Integer(required=True)
    errors = fields.Integer(required=True, metadata={"description": "failed answers: a status of 400 or more"})
    server_errors = fields.Integer(required=True, metadata={"description": "of those, a status of 500 or more"})
    mean_ms = fields.Float(required=True)


class RecentRequest(Schema):
    at = fields.Float(required=True, metadata={"description": "Unix time the request ended"})
    method = fields.String(required=True)
    route = fields.String(required=True)
    model = fields.String(required=True)
    status = fields.Integer(required=True)
    duration_ms = fields.Float(required=True)
    user = fields.String(required=True, allow_none=True)


class Stats(Schema):
    in_flight = fields.Integer(required=True)
    models = fields.List(fields.Nested(ModelStats), required=True)
    recent = fields.List(fields.Nested(RecentRequest), required=True, metadata={"description": "newest first"})


@operation("Requests, errors and latency by model since start, and the latest requests", "admin",
           answer=Stats, access=Access.ADMIN)  # fmt: skip
async def stats(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    by_model: dict[str, dict[str, Any]] = {}
    for (_, model, status), count in m.requests.items():
        if model == "-":  # not a model's request (the API, health checks)
            continue
        row = by_model.setdefault(
            model, {"model": model, "requests": 0, "errors": 0, "server_errors": 0, "mean_ms": 0.0}
        )
        row["requests"] += count
        if int(status) >= 400:  # as Usage counts "failed"
            row["errors"] += count
        if int(status) >= 500:
            row["server_errors"] += count
    for model, (finished, seconds) in m.model_latency.items():
        if model in by_model and finished:
            by_model[model]["mean_ms"] = round(seconds / finished * 1000, 3)
    recent = [
        {"at": at, "method": method, "route": route, "model": model, "status": status,
         "duration_ms": round(seconds * 1000, 3), "user": user}
        for at, method, route, model, status, seconds, user in reversed(m.recent)
    ]  # fmt: skip
    models = sorted(by_model.values(), key=lambda r: -r["requests"])
    return json({"in_flight": m.in_flight, "models": models, "recent": recent})


class InFlightRequest(Schema):
    id = fields.String(required=True, metadata={"description": "the gateway's id of it (what cancel names)"})
    request_id = fields.String(required=True, metadata={"description": "its X-Request-ID (the client's, or minted)"})
    method = fields.String(required=True)
    route = fields.String(required=True)
    model = fields.String(required=True)
    user = fields.String(required=True, allow_none=True)
    user_id = fields.Integer(required=True, allow_none=True)
    age_s = fields.Float(required=True)
    streaming = fields.Boolean(required=True, metadata={"description": "the answer has begun"})
    chunks = fields.Integer(required=True, metadata={"description": "body chunks relayed so far"})
    cancelled_by = fields.String(required=True, allow_none=True)


class InFlightList(Schema):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(InFlightRequest), required=True)


@operation("Model requests being answered now (admins: everyone's; users: their own), oldest first", "requests",
           answer=InFlightList)  # fmt: skip
async def requests_in_flight(request: web.Request) -> web.Response:
    running = request.app[INFLIGHT].visible(request[PRINCIPAL])
    return json({"object": "list", "data": [r.public() for r in sorted(running, key=lambda r: r.started)]})


@operation("Cancel a request in flight: its upstream generation is aborted", "requests", status=204, errors=(404,))
async def cancel_request(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    if not request.app[INFLIGHT].cancel(request_id, request[PRINCIPAL]):
        raise NotFound(f"no request {request_id!r} in flight that you may cancel", param="request_id")
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui", page)
    app.router.add_get("/ui/", page)
    app.router.add_get("/ui/{name}", asset)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/requests", requests_in_flight)
    app.router.add_delete("/api/requests/{request_id}", cancel_request)
