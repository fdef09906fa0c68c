"""auth: every /v1, vLLM-extra and /api request carries a principal, or is answered 401.

Open without credentials: ``/``, ``/health*``, ``/docs``, ``/openapi.json``, login, refresh and logout,
and ``/metrics`` when ``auth.metrics_public`` (else admins only). With ``auth.enabled = false``
every request acts as an anonymous user (a gateway in front of a private vLLM).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy.address import client_ip
from gwproxy.auth.principal import ANONYMOUS
from gwproxy.config import AuthConfig, RateLimitConfig
from gwproxy.errors import Forbidden
from gwproxy.keys import AUTHENTICATOR, PRINCIPAL
from gwproxy.proxy.routes import ROOT_PATHS

OPEN = frozenset({"/api/auth/login", "/api/auth/refresh", "/api/auth/logout"})  # these carry their own credential
GUARDED_ROOTS = frozenset(ROOT_PATHS)


def needs_auth(path: str) -> bool:
    if path.startswith("/v1/") or path.startswith("/api/"):
        return path not in OPEN
    return path in GUARDED_ROOTS


def auth_middleware(cfg: AuthConfig, limits: RateLimitConfig) -> Middleware:
    trusted = limits.trusted_networks()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if request.method == "OPTIONS":
            # CORS preflights carry no credentials by design; the CORS layer answers them (and
            # /v1 routes take no OPTIONS otherwise, so nothing reaches the upstream this way).
            return await handler(request)
        if not cfg.enabled:
            request[PRINCIPAL] = ANONYMOUS
        elif needs_auth(path):
            address = client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)
            request[PRINCIPAL] = await request.app[AUTHENTICATOR].authenticate(request.headers, address)
        elif path == "/metrics" and not cfg.metrics_public:
            address = client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)
            principal = await request.app[AUTHENTICATOR].authenticate(request.headers, address)
            if not principal.is_admin:
                raise Forbidden("/metrics is for admins (auth.metrics_public = false)")
        return await handler(request)

    return auth
