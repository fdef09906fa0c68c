"""Endpoints: the one table of what the gateway does with each path it serves.

Each ``Endpoint`` says, for its path: whether the body is JSON (whatever ``Content-Type`` says:
curl's ``-d`` sends a form type) and the schema it is checked against; whether the answer carries
usage (and where: ``/v1/responses`` has it in its final event, never injected); whether the
request is admitted by the rate limiter, charged to the token bucket, and captured; who may call
it; how large its body may be; where it goes (the upstream, or a local handler that forwards to
``forwards`` — ``/api/chat``); its metric label; and whether browsers reach it across origins.

``lookup(path)`` answers once per request (a dict lookup, then three prefix checks); every layer
reads the flags from the request's ``Exchange`` and none keeps a route list of its own. Adding a
captured, token-limited endpoint is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gwproxy.operations import Access
from gwproxy.proxy.schema import BodyCheck, ChatRequest, CompletionRequest, EmbeddingRequest


class BodyLimit(Enum):
    PROXY = "proxy"  # proxy.max_body_bytes: what goes upstream
    API = "api"  # server.api_max_body_bytes: the gateway's own API and pages
    AUTH = "auth"  # 16 KiB: login, refresh, logout (open to anyone)


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    upstream: bool = False  # forwarded to vLLM as it is
    json: bool = False  # a POST body is JSON whatever Content-Type says
    schema: BodyCheck | None = field(default=None, compare=False)  # what the JSON body must pass
    usage: bool = False  # the answer carries usage: tapped (and, for streams, asked for)
    responses: bool = False  # usage in the final ``response.completed`` event: never injected
    limited: bool = False  # admitted by the rate limiter (requests, concurrency)
    tokens: bool = False  # charged to the token bucket
    generates: bool = True  # for the token estimate: the answer's tokens count too (not embeddings)
    captured: bool = False  # recorded into conversations
    access: Access = Access.USER
    body_limit: BodyLimit = BodyLimit.API
    forwards: str | None = None  # a local handler's upstream path
    label: str = ""  # metric label (default: the path)
    cors: bool = False  # browsers may call it from server.cors_origins

    @property
    def route(self) -> str:
        return self.label or self.path


def _proxied(path: str, **flags: Any) -> Endpoint:
    return Endpoint(path, **{"upstream": True, "limited": True, "body_limit": BodyLimit.PROXY, "cors": True, **flags})


def _generating(path: str, schema: Any, **flags: Any) -> Endpoint:
    return _proxied(path, json=True, schema=schema, usage=True, tokens=True, **flags)


# vLLM endpoints outside /v1 that clients use.
ROOT_PATHS = ("/tokenize", "/detokenize", "/version", "/pooling", "/classify", "/score", "/rerank", "/v2/rerank")

_TOKENIZERS = ("/tokenize", "/detokenize")
_LORA = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")
_AUTH = ("/api/auth/login", "/api/auth/refresh", "/api/auth/logout")  # they carry their own credential
TABLE: dict[str, Endpoint] = {
    e.path: e
    for e in (
        _generating("/v1/chat/completions", BodyCheck(ChatRequest()), captured=True),
        _generating("/v1/completions", BodyCheck(CompletionRequest()), captured=True),
        _generating("/v1/embeddings", BodyCheck(EmbeddingRequest()), generates=False),
        _proxied("/v1/responses", json=True, usage=True, responses=True, tokens=True, captured=True),
        _proxied("/v1/models"),
        _proxied("/v1/audio/transcriptions"),
        _proxied("/v1/audio/translations"),
        _proxied("/v1/rerank"),
        _proxied("/v1/score"),
        *(_proxied(p, json=p in _TOKENIZERS, cors=p in _TOKENIZERS) for p in ROOT_PATHS),
        # vLLM's runtime LoRA endpoints load a path on the vLLM host and unload what others use:
        # administrators only.
        *(_proxied(p, json=True, access=Access.ADMIN, cors=False) for p in _LORA),
        # The original gateway's chat endpoint: a local handler (conversation history) that
        # forwards to the chat completions endpoint; the handler checks its own schema.
        Endpoint(
            "/api/chat",
            json=True,
            usage=True,
            limited=True,
            tokens=True,
            captured=True,
            body_limit=BodyLimit.PROXY,
            forwards="/v1/chat/completions",
            cors=True,
        ),
        *(Endpoint(p, access=Access.PUBLIC, body_limit=BodyLimit.AUTH, cors=True) for p in _AUTH),
        Endpoint("/metrics", access=Access.METRICS),
    )
}
V1_OTHER = _proxied("/v1/", label="/v1/other")  # any other /v1 path: forwarded, one metric label
API = Endpoint("/api/", cors=True)  # the gateway's own API: handlers check admin rights themselves
PAGE = Endpoint("/", access=Access.PUBLIC)  # /, /health, /docs, /openapi.json, the console …


def lookup(path: str) -> Endpoint:
    """The endpoint serving ``path`` (a request's percent-decoded path)."""
    found = TABLE.get(path)
    if found is not None:
        return found
    if path.startswith("/v1/"):
        return V1_OTHER
    if path.startswith("/api/"):
        return API
    return PAGE
