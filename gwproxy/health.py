"""Health: service info, liveness with per-component status, readiness, and /metrics.

Liveness (``/health``) is 200 while the process serves, whatever the upstream does — its
``status`` says ``degraded`` while the upstream is unreachable or serves no model; readiness
(``/health/ready``) is 503 until the upstream answers and serves at least one model — what a
load balancer should route on.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gwproxy import __version__
from gwproxy.bodies import json
from gwproxy.keys import METRICS, UPSTREAM
from gwproxy.proxy.registry import UpstreamRegistry, UpstreamState

_STARTED = time.time()


def _upstream(state: UpstreamState, url: str) -> dict[str, Any]:
    return {
        "status": "up" if state.reachable else "down",
        "url": url,
        "models": list(state.models),
        "checked_at": state.checked_at,
        "error": state.error,
    }


async def index(request: web.Request) -> web.Response:
    registry = request.app[UPSTREAM]
    return json(
        {
            "service": "gwproxy",
            "version": __version__,
            "description": "OpenAI-compatible gateway for self-hosted vLLM",
            "upstream": registry.public_url,
            "models": registry.models(),
            "endpoints": {
                "openai": "/v1",
                "health": "/health",
                "ready": "/health/ready",
                "metrics": "/metrics",
            },
        }
    )


def _serves(registry: UpstreamRegistry) -> bool:
    return any(u.state.reachable and u.state.models for u in registry.upstreams)


async def health(request: web.Request) -> web.Response:
    """``ok`` while every upstream is up and serves a model; ``degraded`` otherwise (one replica
    down or ejected is worth a look even while its model is served by another)."""
    registry = request.app[UPSTREAM]
    every = all(u.state.reachable and u.state.models and not u.ejected for u in registry.upstreams)
    return json(
        {
            "status": "ok" if every else "degraded",
            "version": __version__,
            "uptime_s": round(time.time() - _STARTED, 3),
            "components": {
                "upstream": _upstream(registry.state, registry.public_url),
                "upstreams": registry.public(),
            },
        }
    )


async def ready(request: web.Request) -> web.Response:
    """Ready while at least one upstream answers and serves a model."""
    registry = request.app[UPSTREAM]
    if not _serves(registry):
        await registry.refresh()  # don't make a starting gateway wait a poll interval
    ok = _serves(registry)
    reason = None
    if not any(u.state.reachable for u in registry.upstreams):
        reason = "upstream unreachable"
    elif not ok:
        reason = "upstream serves no model"
    return json(
        {
            "ready": ok,
            "reason": reason,
            "upstream": _upstream(registry.state, registry.public_url),
            "upstreams": registry.public(),
        },
        status=200 if ok else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/health/ready", ready)
    app.router.add_get("/metrics", metrics)
