"""create_app(config): the one place that assembles the gateway.

Middleware order, outermost first, and why:
1. request_id — everything after it, errors included, logs and answers with the request's id;
2. errors     — turns every failure below it into the OpenAI envelope, so the layers below
                simply raise;
   hosts      — a foreign Host is refused before anything else is done for it;
   shape      — a path with dot segments, a body over its route's size or in an encoding the
                gateway cannot decode is refused before anything reads it (login included);
3. metrics    — counts and times what the handler did, seeing failures as exceptions with
                their status before errors renders them (401s included: they are requests too);
4. auth       — establishes the principal; everything after it may rely on request[PRINCIPAL];
5. ratelimit  — needs the principal; refuses before any upstream work, releases after it;
6. capture    — innermost: records only what was admitted, and sees the response end (or the
                client leave) before the limiter settles.
The services, built by ``services`` in one visible sequence, each from its factory with its
dependencies as arguments (and closed in reverse): the database engine (checked to be migrated)
and the stored responses' owners on it,
the bucket store (Redis or in process) and the login/credential guard on it, the auth services on
both, the capture sink (drained into the database or the spool before the engine closes), the
rate limiter (its overrides live in the database, its buckets in the store), the upstream (its
pool is what /v1 uses; it answers the switcher's readiness probe), the switcher (it starts models
behind the upstream; the gate it owns is what /v1 waits on during a model switch). Handlers find
them under their keys (``gwproxy.keys``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from aiohttp import web

from gwproxy import docs, health
from gwproxy.auth import routes as auth_routes
from gwproxy.auth.bootstrap import open_auth
from gwproxy.capture.process.courier import open_capture
from gwproxy.config import Config
from gwproxy.console import routes as console_routes
from gwproxy.conversations import chat as chat_routes
from gwproxy.conversations import routes as conversation_routes
from gwproxy.cors import setup_cors
from gwproxy.inflight import InFlight
from gwproxy.keys import (
    AUTHENTICATOR,
    CAPTURE,
    CONFIG,
    DATABASE,
    GATE,
    GUARD,
    INFLIGHT,
    LIMITER,
    METRICS,
    RESPONSES,
    SWITCHER,
    UPSTREAM,
    USERS,
)  # fmt: skip
from gwproxy.metrics import Metrics
from gwproxy.middlewares.auth import auth_middleware
from gwproxy.middlewares.capture import capture_middleware
from gwproxy.middlewares.errors import errors_middleware
from gwproxy.middlewares.hosts import hosts_middleware
from gwproxy.middlewares.metrics import metrics_middleware
from gwproxy.middlewares.ratelimit import ratelimit_middleware
from gwproxy.middlewares.request_id import add_response_headers, request_id_middleware
from gwproxy.middlewares.shape import shape_middleware
from gwproxy.proxy import routes as proxy_routes
from gwproxy.proxy.registry import open_upstream
from gwproxy.ratelimit import routes as ratelimit_routes
from gwproxy.ratelimit.guard import Guard
from gwproxy.ratelimit.limiter import open_buckets, open_limiter
from gwproxy.store.engine import open_database
from gwproxy.store.responses import ResponseRecords
from gwproxy.switcher import routes as switcher_routes
from gwproxy.switcher.context import open_switcher


def create_app(config: Config, *, demo: bool = False) -> web.Application:
    metrics = Metrics()
    inflight = InFlight()
    app = web.Application(
        middlewares=[
            request_id_middleware(),
            errors_middleware(),
            hosts_middleware(config.server.allowed_host_list()),
            shape_middleware(config),
            metrics_middleware(metrics, inflight),
            auth_middleware(config.auth, config.ratelimit),
            ratelimit_middleware(config.ratelimit),
            capture_middleware(config.capture),
        ],
        client_max_size=config.proxy.max_body_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[INFLIGHT] = inflight

    async def services(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            engine = app[DATABASE] = await stack.enter_async_context(open_database(config.database))
            app[RESPONSES] = ResponseRecords(engine)
            buckets = await stack.enter_async_context(open_buckets(config.ratelimit, metrics))
            guard = app[GUARD] = Guard(buckets, config.auth)
            app[USERS], app[AUTHENTICATOR] = await stack.enter_async_context(
                open_auth(config.auth, engine, guard, demo=demo)
            )
            app[CAPTURE] = await stack.enter_async_context(open_capture(config, engine, metrics))
            app[LIMITER] = await stack.enter_async_context(
                open_limiter(config.ratelimit, engine, buckets, metrics, config.auth.key_cache_seconds)
            )
            managed = bool(config.switch.backend)  # the switcher starts the model: down at start is expected
            upstream = app[UPSTREAM] = await stack.enter_async_context(
                open_upstream(config.upstream, config.upstream_targets(), managed)
            )
            metrics.upstreams = upstream.counts
            switcher = app[SWITCHER] = await stack.enter_async_context(open_switcher(config, upstream, metrics))
            app[GATE] = switcher.gate
            yield

    app.cleanup_ctx.append(services)
    app.on_response_prepare.append(add_response_headers)
    health.add_routes(app)
    docs.add_routes(app)
    proxy_routes.add_routes(app)
    auth_routes.add_routes(app)
    ratelimit_routes.add_routes(app)
    switcher_routes.add_routes(app)
    conversation_routes.add_routes(app)
    chat_routes.add_routes(app)
    console_routes.add_routes(app)
    setup_cors(app, config.server.cors_origin_list())
    return app
