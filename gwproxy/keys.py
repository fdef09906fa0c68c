"""Every typed key the gateway stores on the application or on a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gwproxy.config import Config
    from gwproxy.metrics import Metrics
    from gwproxy.proxy.registry import UpstreamRegistry
    from gwproxy.trace import Trace

CONFIG: web.AppKey[Config] = web.AppKey("config")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
UPSTREAM: web.AppKey[UpstreamRegistry] = web.AppKey("upstream")

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
TRACE: web.RequestKey[Trace] = web.RequestKey("trace")
