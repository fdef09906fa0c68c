"""Docs: the OpenAPI 3.1 document (``GET /openapi.json``) and the interactive page (``GET /docs``).

The document is built by walking the app's router: every route whose handler declares an
``@operation`` (``gwproxy.operations``) is documented from that declaration — summary, request and
response schemas (the marshmallow schemas beside the handlers), statuses, query parameters, and
its security (a bearer JWT or API key, or none) — with the error envelope for every error it
lists. The auth middleware enforces the same declared access. vLLM's own endpoints, which the
gateway relays rather than routes one by one, are documented from the endpoint table
(``UPSTREAM``). A test checks that every ``/api`` route declares an operation.

``/docs`` is Swagger UI 5 (it renders OpenAPI 3.1), served from the files the ``swagger-ui-py``
package installs: no CDN, it works offline. It is on when ``server.debug`` is, or when
``server.docs`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

from gwproxy import __version__
from gwproxy.errors import NotFound
from gwproxy.keys import CONFIG
from gwproxy.operations import Access, Operation, operation_of
from gwproxy.proxy.schema import ChatRequest, CompletionRequest, EmbeddingRequest


class ErrorBody(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.Raw(required=True, allow_none=True, metadata={"description": "a string, an integer or null"})


class ErrorEnvelope(Schema):
    error = fields.Nested(ErrorBody, required=True)


class OpenAIObject(Schema):
    """vLLM's own answer, relayed byte for byte (see the OpenAI API reference)."""

    class Meta:
        unknown = "include"


# One Server-Sent Event, as a client's SSE parser sees it.
SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
}


@dataclass(frozen=True, slots=True)
class Documented:
    method: str
    path: str
    op: Operation


_RELAYED = (400, 413, 429, 502, 503, 504)
# vLLM's endpoints the gateway checks and relays (not routes of their own: one catch-all serves /v1).
UPSTREAM: tuple[Documented, ...] = (
    Documented("post", "/v1/chat/completions", Operation(
        "OpenAI chat completions, relayed to vLLM byte for byte", "v1", ChatRequest, "sse", errors=_RELAYED)),
    Documented("post", "/v1/completions", Operation(
        "OpenAI completions, relayed to vLLM", "v1", CompletionRequest, "sse", errors=_RELAYED)),
    Documented("post", "/v1/embeddings", Operation(
        "OpenAI embeddings, relayed to vLLM", "v1", EmbeddingRequest, OpenAIObject, errors=_RELAYED)),
    Documented("get", "/v1/models", Operation(
        "The models vLLM serves now", "v1", None, OpenAIObject, errors=(429, 502, 503, 504))),
)  # fmt: skip
ID = {"user_id": "integer", "key_id": "integer", "conversation_id": "string", "request_id": "string"}


def operations(app: web.Application) -> list[Documented]:
    """Every documented operation: the routes that declare one, then vLLM's relayed endpoints."""
    found = []
    for route in app.router.routes():
        op = operation_of(route.handler)
        if op is not None and route.resource is not None and route.method != "HEAD":
            found.append(Documented(route.method.lower(), route.resource.canonical, op))
    return [*found, *UPSTREAM]


_STATUS_TEXT = {
    400: "Invalid request (the param names the field)",
    401: "Missing or invalid credentials",
    403: "Your role may not do this",
    404: "Not found (another user's resources are not found either)",
    409: "Conflicts with the current state",
    413: "Request body too large",
    429: "Rate limited (Retry-After)",
    502: "The upstream failed",
    503: "Not available now (Retry-After): model loading or switching, a store away",
    504: "The upstream timed out",
}


def _content(answer: Any) -> dict[str, Any]:
    if isinstance(answer, dict):
        return {
            kind: {"schema": schema if schema is not None else {"type": "string"}} for kind, schema in answer.items()
        }
    return {"application/json": {"schema": answer}}


def _responses(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if op.answer is None:
        out[str(op.status)] = {"description": "Done, no content"}
    elif op.answer == "sse":
        out["200"] = {
            "description": "The completion: JSON, or with stream=true Server-Sent Events, as vLLM sent them",
            "content": {"application/json": {"schema": OpenAIObject}, "text/event-stream": {"schema": SSE_EVENT}},
        }
    elif op.answer == "events":
        out["200"] = {"description": "status, then job events", "content": {"text/event-stream": {"schema": SSE_EVENT}}}
    else:
        out[str(op.status)] = {"description": "OK", "content": _content(op.answer)}
    for status, answer in op.others.items():
        out[str(status)] = {"description": "Also", "content": _content(answer)}
    codes = set(op.errors)
    if op.access is not Access.PUBLIC:
        codes.add(401)
    if op.access is Access.ADMIN:
        codes.add(403)
    for code in sorted(codes):
        out[str(code)] = {"description": _STATUS_TEXT[code], "content": {"application/json": {"schema": ErrorEnvelope}}}
    return out


def _parameters(item: Documented) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": ID[name]}}
        for name in ID
        if "{" + name + "}" in item.path
    ]
    params += [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}, "description": d}
               for n, d in item.op.query.items()]  # fmt: skip
    return params


def _schemas(op: Operation) -> list[type[Schema]]:
    answers = [op.answer, *op.others.values()]
    found = []
    for answer in answers:
        for schema in answer.values() if isinstance(answer, dict) else [answer]:
            if isinstance(schema, type) and issubclass(schema, Schema):
                found.append(schema)
    return found


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes."""
    spec = APISpec(
        title="gwproxy",
        version=__version__,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": "OpenAI-compatible gateway for self-hosted vLLM: auth, limits, capture, model swaps."},
    )
    bearer = {"type": "http", "scheme": "bearer", "description": "an access token (JWT) or an API key (gwp-…)"}
    spec.components.security_scheme("bearer", bearer)
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "x-api-key"})
    found = operations(app)
    named: dict[str, type[Schema]] = {"ErrorEnvelope": ErrorEnvelope, "OpenAIObject": OpenAIObject}
    for item in found:
        for schema in _schemas(item.op):
            named.setdefault(schema.__name__, schema)
    for name in sorted(named):
        spec.components.schema(name, schema=named[name])
    paths: dict[str, dict[str, Any]] = {}
    for item in found:
        op = item.op
        entry: dict[str, Any] = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": f"{item.method}_{item.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": _responses(op),
            "security": [] if op.access is Access.PUBLIC else [{"bearer": []}, {"apiKey": []}],
        }
        if op.access is Access.ADMIN:
            entry["description"] = "Admins only."
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
        parameters = _parameters(item)
        if parameters:
            entry["parameters"] = parameters
        paths.setdefault(item.path, {})[item.method] = entry
    for path in sorted(paths):
        spec.path(path=path, operations=paths[path])
    return spec.to_dict()


# The document, built on the first request (the routes do not change once the app serves).
BUILT: web.AppKey[dict[str, bytes]] = web.AppKey("openapi_built")


async def openapi(request: web.Request) -> web.Response:
    built = request.app[BUILT]
    if "json" not in built:
        built["json"] = orjson.dumps(document(request.app))
    return web.Response(body=built["json"], content_type="application/json")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gwproxy API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/docs-init.js"></script>
</body></html>
"""
INIT = "window.ui = SwaggerUIBundle({url: '/openapi.json', dom_id: '#swagger-ui', deepLinking: true});\n"


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def init_script(request: web.Request) -> web.Response:
    return web.Response(text=INIT, content_type="application/javascript")


def docs_enabled(server_docs: str, debug: bool) -> bool:
    return debug if server_docs == "" else server_docs == "true"


DOCS_OFF = (
    "The API docs page is off on this gateway. Turn it on with GWPROXY_SERVER_DOCS=true (or docs = true "
    "under [server] in config.toml; DEBUG=true turns it on too). The OpenAPI document is always at /openapi.json."
)


async def docs_off(request: web.Request) -> web.Response:
    raise NotFound(DOCS_OFF, code="docs_disabled")


def add_routes(app: web.Application) -> None:
    app[BUILT] = {}
    app.router.add_get("/openapi.json", openapi)
    cfg = app[CONFIG].server
    if not docs_enabled(cfg.docs, cfg.debug):
        app.router.add_get("/docs", docs_off)
        return
    static = resources.files("swagger_ui") / "static"
    app.router.add_get("/docs", page)
    app.router.add_get("/docs/static/docs-init.js", init_script)
    app.router.add_static("/docs/static", str(static), append_version=False)
