"""create_app(config): the one place that assembles the gateway.

Middleware order, outermost first, and why:
1. request_id — everything after it, errors included, logs and answers with the request's id;
2. errors     — turns every failure below it into the OpenAI envelope, so the layers below
                simply raise;
3. metrics    — counts and times what the handler did, seeing failures as exceptions with
                their status before errors renders them.
Cleanup contexts, in dependency order: the upstream registry (its pool is what /v1 uses).
"""

from __future__ import annotations

from aiohttp import web

from gwproxy import health
from gwproxy.config import Config
from gwproxy.keys import CONFIG, METRICS
from gwproxy.metrics import Metrics
from gwproxy.middlewares.errors import errors_middleware
from gwproxy.middlewares.metrics import metrics_middleware
from gwproxy.middlewares.request_id import echo_request_id, request_id_middleware
from gwproxy.proxy import routes as proxy_routes
from gwproxy.proxy.registry import upstream_context


def create_app(config: Config) -> web.Application:
    metrics = Metrics()
    app = web.Application(
        middlewares=[request_id_middleware(), errors_middleware(), metrics_middleware(metrics)],
        client_max_size=config.proxy.max_body_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app.cleanup_ctx.append(upstream_context)
    app.on_response_prepare.append(echo_request_id)
    health.add_routes(app)
    proxy_routes.add_routes(app)
    return app
