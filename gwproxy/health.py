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
from gwproxy.proxy.registry import UpstreamState

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
            "models": list(registry.state.models),
            "endpoints": {
                "openai": "/v1",
                "health": "/health",
                "ready": "/health/ready",
                "metrics": "/metrics",
            },
        }
    )


async def health(request: web.Request) -> web.Response:
    registry = request.app[UPSTREAM]
    up = registry.state.reachable and bool(registry.state.models)
    return json(
        {
            "status": "ok" if up else "degraded",
            "version": __version__,
            "uptime_s": round(time.time() - _STARTED, 3),
            "components": {"upstream": _upstream(registry.state, registry.public_url)},
        }
    )


async def ready(request: web.Request) -> web.Response:
    registry = request.app[UPSTREAM]
    state = registry.state
    if not (state.reachable and state.models):
        state = await registry.refresh()  # don't make a starting gateway wait a poll interval
    ok = state.reachable and bool(state.models)
    reason = None
    if not state.reachable:
        reason = "upstream unreachable"
    elif not state.models:
        reason = "upstream serves no model"
    return json(
        {"ready": ok, "reason": reason, "upstream": _upstream(state, registry.public_url)},
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
