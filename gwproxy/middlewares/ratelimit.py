"""ratelimit: admits each request to a ``limited`` endpoint (``/v1``, vLLM's extras, ``/api/chat``)
against its principal's and its client address's buckets, or answers 429 with ``Retry-After``;
settles and releases after the response.

For an endpoint charged ``tokens`` it needs the request's ``max_tokens`` and prompt: it asks the
exchange for the JSON body (parsed there once, for the proxy too). The ``x-ratelimit-*`` headers go
on every response through ``request[RESPONSE_HEADERS]``.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy.address import client_ip
from gwproxy.config import RateLimitConfig
from gwproxy.keys import EXCHANGE, LIMITER, RESPONSE_HEADERS
from gwproxy.ratelimit.policy import estimate_tokens


def ratelimit_middleware(cfg: RateLimitConfig) -> Middleware:
    trusted = cfg.trusted_networks()

    @web.middleware
    async def ratelimit(request: web.Request, handler: Handler) -> web.StreamResponse:
        exchange = request[EXCHANGE]
        endpoint = exchange.endpoint
        if not cfg.enabled or not endpoint.limited or request.method == "OPTIONS":
            return await handler(request)
        estimate = None
        if endpoint.tokens and request.method == "POST":
            body = await exchange.json(request, check=False)  # checked by the proxy, inside capture
            estimate = estimate_tokens(body, cfg.default_max_tokens, generates=endpoint.generates)
        ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)
        limiter = request.app[LIMITER]
        assert exchange.principal is not None, "auth runs first"
        admission = await limiter.admit(exchange.principal, ip, estimate)
        request[RESPONSE_HEADERS] = admission.headers
        try:
            return await handler(request)
        finally:
            limiter.finish(admission, exchange.trace)

    return ratelimit
