"""ratelimit: admits each /v1 (and vLLM-extra) request against its principal's and its client
address's buckets, or answers 429 with ``Retry-After``; settles and releases after the response.

For the token limit it needs the request's ``max_tokens`` and prompt: it parses a JSON body
here, once, and leaves it in ``request[BODY]`` for the proxy. The ``x-ratelimit-*`` headers go on
every response through ``request[RESPONSE_HEADERS]``.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy.config import RateLimitConfig
from gwproxy.keys import BODY, LIMITER, PRINCIPAL, RESPONSE_HEADERS, TRACE
from gwproxy.middlewares.auth import GUARDED_ROOTS
from gwproxy.proxy.routes import JSON_ROUTES, parse_body
from gwproxy.ratelimit.policy import client_ip, estimate_tokens

TOKEN_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/api/chat"})


def limited(path: str) -> bool:
    return path.startswith("/v1/") or path in GUARDED_ROOTS or path == "/api/chat"


def ratelimit_middleware(cfg: RateLimitConfig) -> Middleware:
    trusted = cfg.trusted_networks()

    @web.middleware
    async def ratelimit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not cfg.enabled or request.method == "OPTIONS" or not limited(request.path):
            return await handler(request)
        body = None
        if request.path in TOKEN_ROUTES and request.method == "POST" and request.path in JSON_ROUTES:
            raw = await request.read()
            if raw:
                body = request[BODY] = parse_body(raw)
        estimate = estimate_tokens(body, cfg.default_max_tokens)
        ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)
        limiter = request.app[LIMITER]
        admission = await limiter.admit(request[PRINCIPAL], ip, estimate)
        request[RESPONSE_HEADERS] = admission.headers
        try:
            return await handler(request)
        finally:
            limiter.finish(admission, request[TRACE])

    return ratelimit
