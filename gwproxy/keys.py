"""Every typed key the gateway stores on the application or on a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from gwproxy.auth.authenticator import Authenticator
    from gwproxy.auth.users import UserService
    from gwproxy.capture.record import RecordSink
    from gwproxy.config import Config
    from gwproxy.conversations.chat import RecentTurns
    from gwproxy.inflight import InFlight
    from gwproxy.metrics import Metrics
    from gwproxy.principal import Principal
    from gwproxy.proxy.exchange import Exchange
    from gwproxy.proxy.registry import UpstreamRegistry
    from gwproxy.proxy.stored import ResponseBook
    from gwproxy.ratelimit.guard import Guard
    from gwproxy.ratelimit.limiter import Limiter
    from gwproxy.switcher.gate import Gate
    from gwproxy.switcher.switcher import Switcher

CONFIG: web.AppKey[Config] = web.AppKey("config")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
UPSTREAM: web.AppKey[UpstreamRegistry] = web.AppKey("upstream")
DATABASE: web.AppKey[AsyncEngine] = web.AppKey("database")
USERS: web.AppKey[UserService] = web.AppKey("users")
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator")
GUARD: web.AppKey[Guard] = web.AppKey("guard")
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
SWITCHER: web.AppKey[Switcher] = web.AppKey("switcher")
GATE: web.AppKey[Gate] = web.AppKey("gate")
CAPTURE: web.AppKey[RecordSink] = web.AppKey("capture")
RECENT_TURNS: web.AppKey[RecentTurns] = web.AppKey("recent_turns")
RESPONSES: web.AppKey[ResponseBook] = web.AppKey("responses")  # who may name each stored response
INFLIGHT: web.AppKey[InFlight] = web.AppKey("inflight")  # model requests being answered now

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
EXCHANGE: web.RequestKey[Exchange] = web.RequestKey("exchange")  # the request as every layer sees it
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")  # for the API's handlers
RESPONSE_HEADERS: web.RequestKey[dict[str, str]] = web.RequestKey("response_headers")
