"""Connections: the HTTP server's guards on each client connection, before any request exists.

aiohttp waits for a request head without limit once its first bytes have arrived, so a client
that sends half a head and stops (slowloris) holds a descriptor for as long as it likes. Here:
- ``header_timeout``: once the first bytes of a request head arrive on an idle connection, the
  whole head must arrive within that many seconds, or the connection is closed;
- ``keepalive_timeout``: a connection with no request in progress — a new one included — is
  closed after that many idle seconds (aiohttp's own keep-alive timer, set from configuration);
- ``max_connections_per_address`` (0 = no cap): a client address past it has new connections
  closed at once. The address is the TCP peer's: behind a proxy, leave it 0.

``GuardedRunner`` is an ``AppRunner`` whose server makes ``GuardedHandler``s. Both lean on
aiohttp's ``RequestHandler`` internals (``_request_in_progress``: a handler runs; ``_messages``:
heads parsed and not yet handled), which the tests exercise against real sockets.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gwproxy import log
from gwproxy.config import ServerConfig

_log = log.get("gwproxy.connections")


class GuardedServer(web.Server):
    def __init__(self, handler: Any, *, guards: ServerConfig, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=guards.keepalive_timeout, **kwargs)
        self.header_timeout = guards.header_timeout
        self.per_address = guards.max_connections_per_address
        self.open_by_address: Counter[str] = Counter()

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


class GuardedHandler(RequestHandler):
    __slots__ = ("_address", "_guards", "_head_timer")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guards = manager
        self._head_timer: asyncio.TimerHandle | None = None
        self._address: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        guards = self._guards
        if guards.per_address:
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if peer else "?"
            if guards.open_by_address[address] >= guards.per_address:
                _log.warning("connection refused: too many from one address", remote=address)
                self.force_close()
                transport.close()
                return
            guards.open_by_address[address] += 1
            self._address = address

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        if self._address is not None:
            counts = self._guards.open_by_address
            counts[self._address] -= 1
            if counts[self._address] <= 0:
                del counts[self._address]
            self._address = None
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """No request is being handled or queued: bytes arriving now are a new request's head."""
        return not self._request_in_progress and not self._messages

    def data_received(self, data: bytes) -> None:
        idle = self._idle()
        super().data_received(data)
        if self._messages:
            self._stop_head_timer()
        elif idle and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._guards.header_timeout, self._head_expired)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._idle():
            _log.info("connection closed: request head not finished in time", timeout=self._guards.header_timeout)
            self.force_close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose server guards its connections (see the module's docstring)."""

    __slots__ = ("_guards",)

    def __init__(self, app: web.Application, *, guards: ServerConfig, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guards = guards

    async def _make_server(self) -> web.Server:
        app = self.app
        app._set_loop(asyncio.get_running_loop())
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        return GuardedServer(app._handle, request_factory=app._make_request, guards=self._guards, **self._kwargs)
