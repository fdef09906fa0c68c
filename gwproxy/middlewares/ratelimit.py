"""ratelimit: admits each /v1 (and vLLM-extra) request against its principal's and its client
address's buckets, or answers 429 with ``Retry-After``; settles and releases after the response.

For the token limit it needs the request's ``max_tokens`` and prompt: it parses a JSON body
here, once, and leaves it in ``request[BODY]`` for the proxy. The ``x-ratelimit-*`` headers go on
every response through ``request[RESPONSE_HEADERS]``.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy.address import client_ip
from gwproxy.config import RateLimitConfig
from gwproxy.keys import BODY, LIMITER, PRINCIPAL, RESPONSE_HEADERS, TRACE
from gwproxy.middlewares.auth import GUARDED_ROOTS
from gwproxy.proxy.routes import parse_body
from gwproxy.ratelimit.policy import estimate_tokens

# Routes charged to the token bucket: they generate (or, for embeddings, read) tokens. Nothing else
# is: listing models or tokenizing costs requests, not tokens.
TOKEN_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/api/chat"})


def limited(path: str) -> bool:
    return path.startswith("/v1/") or path in GUARDED_ROOTS or path == "/api/chat"


def ratelimit_middleware(cfg: RateLimitConfig) -> Middleware:
    trusted = cfg.trusted_networks()

    @web.middleware
    async def ratelimit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not cfg.enabled or request.method == "OPTIONS" or not limited(request.path):
            return await handler(request)
        estimate = None
        if request.path in TOKEN_ROUTES and request.method == "POST":
            raw = await request.read()
            body = parse_body(raw) if raw else None
            if body is not None:
                request[BODY] = body
            estimate = estimate_tokens(body, cfg.default_max_tokens, generates=request.path != "/v1/embeddings")
        ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)
        limiter = request.app[LIMITER]
        admission = await limiter.admit(request[PRINCIPAL], ip, estimate)
        request[RESPONSE_HEADERS] = admission.headers
        try:
            return await handler(request)
        finally:
            limiter.finish(admission, request[TRACE])

    return ratelimit
