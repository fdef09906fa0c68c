"""Registry: the upstream's one shared connection pool and what the gateway knows of it.

Owns the ``ClientSession`` every proxied request uses, the ``Watchdog`` that ends silent
upstream bodies, and a poller that asks the upstream's
``/v1/models`` every ``poll_interval`` seconds to learn the served model names (the first one is
what the alias ``"current"`` means) and whether the upstream answers at all. Only the poller
writes the state; handlers read it.

An upstream that is down is said plainly: logged when the gateway starts, when it goes down and
every ``DOWN_LOG_POLLS`` polls (a minute at the default interval) while it stays down, with the
reason (a base URL whose ``/models`` answers 404 gets a hint about ``/v1``); a request for
``current`` that finds no served name known is answered 503 saying whether the upstream is
unreachable or up but serving no model yet (loading).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import orjson

from gwproxy import log
from gwproxy.config import UpstreamConfig
from gwproxy.errors import ModelNotReady
from gwproxy.proxy.watchdog import Watchdog

_log = log.get("gwproxy.upstream")

ALIASES = frozenset({"current"})
DOWN_LOG_POLLS = 12


PROBE_SECONDS = 2.0  # a readiness probe's bound


@dataclass(frozen=True, slots=True)
class UpstreamState:
    reachable: bool = False
    models: tuple[str, ...] = ()
    checked_at: float | None = None  # wall-clock seconds
    error: str | None = None


class UpstreamRegistry:
    def __init__(self, cfg: UpstreamConfig, managed: bool = False) -> None:
        self.cfg = cfg
        self.managed = managed  # the gateway starts the model itself: down at start is expected
        self.origin = cfg.origin
        self.v1_url = cfg.v1_url
        self.public_origin = cfg.public_origin  # the forms to show: credentials masked
        self.public_url = cfg.public_v1_url
        self.state = UpstreamState()
        self._down_logged = 0.0  # monotonic time of the last "unreachable" line
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.watchdog = Watchdog(cfg.idle_timeout, cfg.first_byte_timeout)
        self._auth = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "registry not started"
        return self._session

    @property
    def auth_headers(self) -> dict[str, str]:
        """What the gateway sends upstream to authenticate itself (VLLM_API_KEY)."""
        return self._auth

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.cfg.max_connections, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # relay bytes as sent, compressed or not
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.connect_timeout),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._poll(), name="gwproxy-upstream-poller"),
            asyncio.create_task(self.watchdog.run(), name="gwproxy-upstream-watchdog"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval)
            await self.refresh()

    async def refresh(self) -> UpstreamState:
        """Ask the upstream which models it serves; never raises."""
        url = self.v1_url + "/models"
        try:
            async with self.session.get(
                url, headers=self._auth, timeout=aiohttp.ClientTimeout(total=self.cfg.connect_timeout * 2)
            ) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ValueError(self._bad_status(resp.status))
                cards = orjson.loads(body).get("data") or []
                models = tuple(str(c["id"]) for c in cards if isinstance(c, dict) and "id" in c)
            new = UpstreamState(True, models, time.time(), None)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, AttributeError) as exc:
            new = UpstreamState(False, self.state.models, time.time(), log.redact(f"{type(exc).__name__}: {exc}"))
        changed = (new.reachable, new.models) != (self.state.reachable, self.state.models)
        first = self.state.checked_at is None
        now = time.monotonic()
        if new.reachable and (changed or first):
            _log.info("upstream up", url=self.public_url, models=list(new.models))
        elif not new.reachable and first and self.managed:
            self._down_logged = now  # the model manager is about to start it: said as such, not as a fault
            _log.info("upstream not up yet: the model manager starts the model", url=self.public_url)
        elif not new.reachable and (
            changed or first or now - self._down_logged >= self.cfg.poll_interval * DOWN_LOG_POLLS
        ):
            self._down_logged = now
            _log.warning("upstream unreachable", url=self.public_url, error=new.error)
        self.state = new
        return new

    async def ready(self, served_name: str | None) -> bool:
        """Whether the upstream is up (``/health`` answers 200) and, with ``served_name``, serves
        that model (``/v1/models``, read by ``refresh``, which updates ``state`` too): what a
        model switch waits for."""
        try:
            probe = aiohttp.ClientTimeout(total=PROBE_SECONDS)
            async with self.session.get(self.origin + "/health", headers=self._auth, timeout=probe) as r:
                if r.status != 200:
                    return False
        except (aiohttp.ClientError, TimeoutError):
            return False
        if served_name is None:
            return True
        state = await self.refresh()
        return state.reachable and served_name in state.models

    def _bad_status(self, status: int) -> str:
        said = f"GET {self.public_url}/models answered {status}"
        if status == 404 and not self.v1_url.endswith("/v1"):
            return f"{said}: did you mean {self.public_origin}/v1? (vLLM serves its API under /v1)"
        return said

    def resolve(self, model: str) -> str:
        """The served name a request's ``model`` stands for (aliases resolved)."""
        if model not in ALIASES:
            return model
        state = self.state
        if state.models:  # the last served name known (one failed poll does not unname it)
            return state.models[0]
        if not state.reachable:
            raise ModelNotReady(
                f"model alias '{model}' cannot be resolved: the upstream {self.public_url} is unreachable "
                f"({state.error or 'no answer yet'}); is vLLM running there?"
            )
        raise ModelNotReady(
            f"model alias '{model}' cannot be resolved: the upstream {self.public_url} answers but serves "
            "no model yet (still loading?)"
        )

    def label(self, model: str | None) -> str:
        """A bounded metric label: a served model's name, else ``other``."""
        if model is None:
            return "-"
        return model if model in self.state.models else "other"


@asynccontextmanager
async def open_upstream(cfg: UpstreamConfig, managed: bool = False) -> AsyncIterator[UpstreamRegistry]:
    """The upstream, polled for the models it serves, with its connection pool; ``managed`` when
    the gateway's model manager starts what serves there."""
    registry = UpstreamRegistry(cfg, managed)
    await registry.start()
    try:
        yield registry
    finally:
        await registry.close()
