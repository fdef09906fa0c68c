"""auth: a request to an endpoint of access ``USER`` or ``ADMIN`` carries a principal, or is
answered 401 (403 for a user at an admin endpoint); the principal goes on the exchange and in
``request[PRINCIPAL]`` for the API's handlers.

Open without credentials (``PUBLIC``): ``/``, ``/health*``, ``/docs``, ``/openapi.json``, login,
refresh and logout; ``/metrics`` (``METRICS``) when ``auth.metrics_public``, else admins only.
With ``auth.enabled = false`` every request acts as an anonymous user (a gateway in front of a
private vLLM).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy.address import client_ip
from gwproxy.config import AuthConfig, RateLimitConfig
from gwproxy.errors import Forbidden
from gwproxy.keys import AUTHENTICATOR, EXCHANGE, PRINCIPAL
from gwproxy.operations import Access, operation_of
from gwproxy.principal import ANONYMOUS


def _route_access(request: web.Request) -> Access | None:
    """The access the matched route's handler declares (``@operation``), if it declares one."""
    op = operation_of(request.match_info.handler)
    return None if op is None else op.access


def auth_middleware(cfg: AuthConfig, limits: RateLimitConfig) -> Middleware:
    trusted = limits.trusted_networks()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":
            # CORS preflights carry no credentials by design; the CORS layer answers them (and
            # /v1 routes take no OPTIONS otherwise, so nothing reaches the upstream this way).
            return await handler(request)
        exchange = request[EXCHANGE]
        access = exchange.endpoint.access
        if not cfg.enabled:
            exchange.principal = request[PRINCIPAL] = ANONYMOUS
        elif access is Access.USER or access is Access.ADMIN:
            address = client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)
            principal = await request.app[AUTHENTICATOR].authenticate(request.headers, address)
            exchange.principal = request[PRINCIPAL] = principal
            if not principal.is_admin and (access is Access.ADMIN or _route_access(request) is Access.ADMIN):
                raise Forbidden("This route is for admins")
        elif access is Access.METRICS and not cfg.metrics_public:
            address = client_ip(request.remote, request.headers.get("X-Forwarded-For"), trusted)
            principal = await request.app[AUTHENTICATOR].authenticate(request.headers, address)
            if not principal.is_admin:
                raise Forbidden("/metrics is for admins (auth.metrics_public = false)")
        return await handler(request)

    return auth
