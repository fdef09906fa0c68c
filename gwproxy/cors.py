"""CORS: browser access to /v1 and /api from ``server.cors_origins``, through aiohttp-cors.

Preflights (``OPTIONS``) are answered by the gateway itself, never forwarded to vLLM; the
request id, rate-limit and overhead headers are exposed to scripts. No origins configured: no
CORS headers at all (browsers then refuse cross-origin calls).
"""

from __future__ import annotations

import aiohttp_cors
from aiohttp import web

from gwproxy.proxy.endpoints import lookup

EXPOSED = (
    "X-Request-ID",
    "Retry-After",
    "retry-after-ms",
    "x-gwproxy-overhead-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def setup_cors(app: web.Application, origins: list[str]) -> None:
    """Call after every route is added."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials="*" not in origins,
        expose_headers=EXPOSED,
        allow_headers="*",
        allow_methods="*",
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        path = route.resource.canonical if route.resource is not None else ""
        if path and lookup(path).cors:  # the endpoint table says which (/v1, /api, the tokenizers)
            cors.add(route)
