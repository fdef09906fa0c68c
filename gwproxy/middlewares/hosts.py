"""hosts: refuses a request whose ``Host`` is not one of ``server.allowed_hosts`` (400), so the
gateway cannot be reached under a name it does not serve (DNS rebinding). Empty list: any host.
A leading ``*.`` matches any subdomain."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gwproxy.errors import InvalidRequest


def host_allowed(host: str, allowed: list[str]) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    for pattern in allowed:
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def hosts_middleware(allowed: list[str]) -> Middleware:
    @web.middleware
    async def hosts(request: web.Request, handler: Handler) -> web.StreamResponse:
        if allowed and not host_allowed(request.host, allowed):
            raise InvalidRequest(f"Host {request.host!r} is not served here", code="host_not_allowed")
        return await handler(request)

    return hosts
