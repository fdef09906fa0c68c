"""Docs: the OpenAPI 3.1 document (``GET /openapi.json``) and the interactive page (``GET /docs``).

The document is generated with apispec from the marshmallow schemas the handlers load requests
with (auth, limits, models, conversations, chat, and the /v1 request checks), plus the response
schemas below, which describe what the handlers render. Every operation lists its security
(a bearer JWT or API key, or none), its error envelope, and its statuses. ``OPERATIONS`` is the
one table of what is documented; a test checks it against the app's router, so a new route
cannot go undocumented.

``/docs`` is Swagger UI 5 (it renders OpenAPI 3.1), served from the files the ``swagger-ui-py``
package installs: no CDN, it works offline. It is on when ``server.debug`` is, or when
``server.docs`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields

from gwproxy import __version__
from gwproxy.auth import schemas as auth_schemas
from gwproxy.bodies import json
from gwproxy.conversations.chat import ChatBody
from gwproxy.conversations.routes import ConversationChange, NewConversation
from gwproxy.errors import NotFound
from gwproxy.keys import CONFIG
from gwproxy.proxy.schema import ChatRequest, CompletionRequest, EmbeddingRequest
from gwproxy.ratelimit.routes import LimitsBody
from gwproxy.switcher.routes import SwitchBody

# ---- response schemas: what the handlers render ------------------------------------------------


class ErrorBody(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.Raw(required=True, allow_none=True, metadata={"description": "a string, an integer or null"})


class ErrorEnvelope(Schema):
    error = fields.Nested(ErrorBody, required=True)


class TokenPair(Schema):
    access_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)
    refresh_token = fields.String(required=True)
    refresh_expires_in = fields.Integer(required=True)


class Me(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    role = fields.String(required=True)
    auth = fields.String(required=True)
    key_id = fields.Integer(required=True, allow_none=True)


class ApiKey(Schema):
    id = fields.Integer(required=True)
    user_id = fields.Integer(required=True)
    name = fields.String(required=True)
    prefix = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    expires_at = fields.DateTime(required=True, allow_none=True)
    last_used_at = fields.DateTime(required=True, allow_none=True)
    revoked_at = fields.DateTime(required=True, allow_none=True)


class NewApiKey(ApiKey):
    key = fields.String(required=True, metadata={"description": "the key itself, shown this once"})


class User(Schema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    role = fields.String(required=True)
    active = fields.Boolean(required=True)
    capture = fields.Boolean(required=True)
    created_at = fields.DateTime(required=True)


class KeyList(Schema):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(ApiKey), required=True)


class UserList(Schema):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(User), required=True)


class Limits(Schema):
    user_id = fields.Integer()
    key_id = fields.Integer()
    overrides = fields.Dict(required=True)
    effective = fields.Dict(required=True)


class ModelsStatus(Schema):
    backend = fields.String(required=True, allow_none=True)
    state = fields.String(required=True)
    current_profile = fields.String(required=True, allow_none=True)
    instance = fields.Dict(required=True, allow_none=True)
    served_models = fields.List(fields.String(), required=True)
    upstream = fields.Dict(required=True)
    error = fields.String(required=True, allow_none=True)
    boot = fields.Dict(required=True, allow_none=True)  # default, started, reason: a default that did not fit
    gate = fields.Dict(required=True)
    job = fields.Dict(required=True, allow_none=True)
    hardware = fields.Dict(required=True)


class ProfileList(Schema):
    hardware = fields.String(required=True)
    current_profile = fields.String(required=True, allow_none=True)
    data = fields.List(fields.Dict(), required=True)
    problems = fields.List(fields.Dict(), required=True)


class Recommendations(Schema):
    hardware = fields.Dict(required=True)
    recommendations = fields.List(fields.Dict(), required=True)


class SwitchAnswer(Schema):
    job = fields.Dict(required=True)
    joined = fields.Boolean(required=True)


class Reloaded(Schema):
    loaded = fields.List(fields.String(), required=True)
    problems = fields.List(fields.Dict(), required=True)


class Conversation(Schema):
    id = fields.String(required=True)
    title = fields.String(required=True)
    model = fields.String(required=True, allow_none=True)
    metadata = fields.Dict(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class ConversationFull(Conversation):
    messages = fields.List(
        fields.Dict(), required=True, metadata={"description": "every message; parent_id links branches"}
    )
    branch = fields.List(fields.String(), required=True, metadata={"description": "ids of the current branch"})


class ConversationPage(Schema):
    data = fields.List(fields.Nested(Conversation), required=True)
    next_cursor = fields.String(required=True, allow_none=True)
    has_more = fields.Boolean(required=True)


class Usage(Schema):
    user_id = fields.Raw(required=True, metadata={"description": "a user id, or 'all'"})
    data = fields.List(fields.Dict(), required=True)
    total = fields.Dict(required=True)


class OpenAIObject(Schema):
    """vLLM's own answer, relayed byte for byte (see the OpenAI API reference)."""

    class Meta:
        unknown = "include"


# One Server-Sent Event, as a client's SSE parser sees it.
SSE_EVENT = {
    "type": "object",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
}

# ---- the operations ----------------------------------------------------------------------------

USER, ADMIN, PUBLIC = "user", "admin", "public"


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    tag: str
    body: type[Schema] | None = None
    answer: type[Schema] | str | None = None  # a schema, "sse" (event stream or JSON), "text", or None (204)
    status: int = 200
    access: str = USER
    errors: tuple[int, ...] = ()
    query: dict[str, str] = field(default_factory=dict)  # name → description


ID = {"user_id": "integer", "key_id": "integer", "conversation_id": "string"}
OPERATIONS: tuple[Op, ...] = (
    Op("post", "/api/auth/login", "Sign in: an access token and a refresh token", "auth", auth_schemas.Login,
       TokenPair, access=PUBLIC, errors=(400, 401, 429)),
    Op("post", "/api/auth/refresh", "Trade a refresh token for a new pair", "auth", auth_schemas.Refresh, TokenPair,
       access=PUBLIC, errors=(400, 401)),
    Op("post", "/api/auth/logout", "End a session (revoke its refresh token)", "auth", auth_schemas.Refresh, None,
       status=204, access=PUBLIC, errors=(400,)),
    Op("get", "/api/auth/me", "Who you are", "auth", None, Me),
    Op("post", "/api/auth/keys", "Create an API key (shown once)", "auth", auth_schemas.NewKey, NewApiKey, status=201,
       errors=(400, 403, 404)),
    Op("get", "/api/auth/keys", "Your API keys (admins: ?user_id=N or all)", "auth", None, KeyList, errors=(400, 403),
       query={"user_id": "admins: a user id, or 'all'"}),
    Op("delete", "/api/auth/keys/{key_id}", "Revoke an API key", "auth", None, None, status=204, errors=(403, 404)),
    Op("get", "/api/admin/users", "All users", "admin", None, UserList, access=ADMIN),
    Op("post", "/api/admin/users", "Create a user", "admin", auth_schemas.NewUser, User, status=201, access=ADMIN,
       errors=(400, 409)),
    Op("patch", "/api/admin/users/{user_id}", "Change a user's role, active flag or capture", "admin",
       auth_schemas.UserChange, User, access=ADMIN, errors=(400, 404)),
    Op("get", "/api/admin/users/{user_id}/limits", "A user's rate-limit overrides and limits in effect", "admin",
       None, Limits, access=ADMIN, errors=(404,)),
    Op("put", "/api/admin/users/{user_id}/limits", "Replace a user's rate-limit overrides", "admin", LimitsBody,
       Limits, access=ADMIN, errors=(400, 404)),
    Op("get", "/api/admin/keys/{key_id}/limits", "An API key's rate-limit overrides", "admin", None, Limits,
       access=ADMIN, errors=(404,)),
    Op("put", "/api/admin/keys/{key_id}/limits", "Replace an API key's rate-limit overrides", "admin", LimitsBody,
       Limits, access=ADMIN, errors=(400, 404)),
    Op("get", "/api/models/status", "The running model, the switch job, the GPUs, the upstream", "models", None,
       ModelsStatus),
    Op("get", "/api/models/profiles", "Every model profile with its fit for this hardware", "models", None,
       ProfileList),
    Op("get", "/api/models/hardware-recommendations", "Every profile ranked for this hardware", "models", None,
       Recommendations),
    Op("post", "/api/models/switch", "Switch the served model (202 + job; 200 for a dry run)", "models", SwitchBody,
       SwitchAnswer, status=202, access=ADMIN, errors=(400, 404, 409)),
    Op("post", "/api/models/reload", "Re-read the profile files", "models", None, Reloaded, access=ADMIN),
    Op("get", "/api/models/events", "Switch progress as Server-Sent Events, ending with the job", "models", None,
       "events", query={"follow": "true: stay open across switches (default false)"}),
    Op("get", "/api/conversations", "Your conversations, newest first", "conversations", None, ConversationPage,
       errors=(400,), query={"limit": "1 to 100 (default 20)", "cursor": "next_cursor of the previous page",
                             "model": "only this model", "since": "ISO date or time", "until": "ISO date or time",
                             "q": "text in the title"}),
    Op("post", "/api/conversations", "Start a conversation", "conversations", NewConversation, Conversation,
       status=201, errors=(400,)),
    Op("get", "/api/conversations/{conversation_id}", "A conversation with every message", "conversations", None,
       ConversationFull, errors=(404,)),
    Op("patch", "/api/conversations/{conversation_id}", "Rename it or change its metadata", "conversations",
       ConversationChange, Conversation, errors=(400, 404)),
    Op("delete", "/api/conversations/{conversation_id}", "Delete a conversation", "conversations", None, None,
       status=204, errors=(404,)),
    Op("get", "/api/conversations/{conversation_id}/export", "Export as JSON or Markdown", "conversations", None,
       "export", errors=(400, 404), query={"format": "json (default) or markdown"}),
    Op("post", "/api/chat", "Chat in a conversation (the /v1/chat/completions answer)", "conversations", ChatBody,
       "sse", errors=(400, 404, 429, 502, 503, 504)),
    Op("get", "/api/usage", "Requests and tokens by day and model", "conversations", None, Usage, errors=(400, 403),
       query={"since": "ISO date or time", "until": "ISO date or time", "user_id": "admins: a user id, or 'all'"}),
    Op("post", "/v1/chat/completions", "OpenAI chat completions, relayed to vLLM byte for byte", "v1", ChatRequest,
       "sse", errors=(400, 413, 429, 502, 503, 504)),
    Op("post", "/v1/completions", "OpenAI completions, relayed to vLLM", "v1", CompletionRequest, "sse",
       errors=(400, 413, 429, 502, 503, 504)),
    Op("post", "/v1/embeddings", "OpenAI embeddings, relayed to vLLM", "v1", EmbeddingRequest, OpenAIObject,
       errors=(400, 413, 429, 502, 503, 504)),
    Op("get", "/v1/models", "The models vLLM serves now", "v1", None, OpenAIObject, errors=(429, 502, 503, 504)),
)  # fmt: skip

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


def _responses(op: Op) -> dict[str, Any]:
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
    elif op.answer == "export":
        out["200"] = {
            "description": "The conversation (attachment)",
            "content": {
                "application/json": {"schema": ConversationFull},
                "text/markdown": {"schema": {"type": "string"}},
            },
        }
    else:
        assert isinstance(op.answer, type)
        out[str(op.status)] = {"description": "OK", "content": {"application/json": {"schema": op.answer}}}
        if op.path == "/api/models/switch":
            out["200"] = {
                "description": "A dry run: the plan",
                "content": {"application/json": {"schema": SwitchAnswer}},
            }
    codes = set(op.errors) | ({401} if op.access != PUBLIC else set()) | ({403} if op.access == ADMIN else set())
    for code in sorted(codes):
        out[str(code)] = {"description": _STATUS_TEXT[code], "content": {"application/json": {"schema": ErrorEnvelope}}}
    return out


def _parameters(op: Op) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": ID[name]}}
        for name in ID
        if "{" + name + "}" in op.path
    ]
    params += [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}, "description": d}
               for n, d in op.query.items()]  # fmt: skip
    return params


@cache
def document() -> dict[str, Any]:
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
    for schema in (ErrorEnvelope, TokenPair, Me, ApiKey, NewApiKey, User, KeyList, UserList, Limits, ModelsStatus,
                   ProfileList, Recommendations, SwitchAnswer, Reloaded, Conversation, ConversationFull,
                   ConversationPage, Usage, OpenAIObject):  # fmt: skip
        spec.components.schema(schema.__name__, schema=schema)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        operation: dict[str, Any] = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": _responses(op),
            "security": [] if op.access == PUBLIC else [{"bearer": []}, {"apiKey": []}],
        }
        if op.access == ADMIN:
            operation["description"] = "Admins only."
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
        parameters = _parameters(op)
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(op.path, {})[op.method] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


async def openapi(request: web.Request) -> web.Response:
    return json(document())


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
    app.router.add_get("/openapi.json", openapi)
    cfg = app[CONFIG].server
    if not docs_enabled(cfg.docs, cfg.debug):
        app.router.add_get("/docs", docs_off)
        return
    static = resources.files("swagger_ui") / "static"
    app.router.add_get("/docs", page)
    app.router.add_get("/docs/static/docs-init.js", init_script)
    app.router.add_static("/docs/static", str(static), append_version=False)
