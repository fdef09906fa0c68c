"""Registry: the upstreams, their one shared connection pool, and which of them serves what.

Owns the ``ClientSession`` every proxied request uses, the ``Watchdog`` that ends silent
upstream bodies, the ``Balancer`` that picks among a model's replicas, and three background
tasks: a poller that asks every upstream's ``/v1/models`` each ``poll_interval`` seconds (the
served names, and whether it answers at all), a scraper of each replica's ``/metrics`` (only with
several upstreams: load figures for the balancer) and a prober that asks an ejected upstream's
``/health`` once its cool-down is over and brings it back when it answers. Only these tasks and
the request path write the upstreams' state; handlers read it.

The first upstream is the primary: where the model manager's models serve, whose first served
name is what the alias ``"current"`` means (else the first name any upstream serves). A request
naming a model no upstream is known to serve triggers one refresh (at most one a second) and is
then answered 404 listing the models that are served, unless no upstream answers at all (then it
goes to the primary and gets the upstream's own failure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aiohttp

from gwproxy.config import UpstreamConfig, UpstreamTarget
from gwproxy.errors import ModelNotFound, ModelNotReady
from gwproxy.metrics import UpstreamCounts
from gwproxy.principal import Principal
from gwproxy.proxy.balancer import Balancer
from gwproxy.proxy.upstream import Upstream, UpstreamState
from gwproxy.proxy.watchdog import Watchdog

ALIASES = frozenset({"current"})


class Loader(Protocol):
    """Starts the model a request names when nothing serves it (on demand); True once it is
    served, False when there is no such model to load. Raises to refuse or to say it is loading."""

    async def __call__(self, model: str, principal: Principal | None, gone: Callable[[], bool]) -> bool: ...

    def cards(self) -> list[dict[str, Any]]:
        """Model cards for what could be loaded but is not running (``/v1/models`` lists them)."""

    def loadable(self, model: str) -> bool:
        """Whether ``model`` names something it could load."""

    def progress(self, model: str) -> str:
        """How the load of ``model`` is going, in words (phase, requests waiting)."""


PROBE_SECONDS = 2.0  # a readiness or health probe's bound
MISS_REFRESH_SECONDS = 1.0  # an unknown model refreshes the lists at most this often

__all__ = ["ALIASES", "UpstreamRegistry", "UpstreamState", "open_upstream"]


class UpstreamRegistry:
    def __init__(self, cfg: UpstreamConfig, targets: tuple[UpstreamTarget, ...], managed: bool = False) -> None:
        assert targets, "at least one upstream"
        self.cfg = cfg
        self.upstreams = tuple(Upstream(t, cfg, managed and i == 0) for i, t in enumerate(targets))
        self.primary = self.upstreams[0]
        self.balancer = Balancer(cfg.affinity_entries, cfg.balance == "round_robin")
        self.watchdog = Watchdog(cfg.idle_timeout, cfg.first_byte_timeout)
        self._serving: dict[str, tuple[Upstream, ...]] = {}  # reachable at the last poll
        self._known: dict[str, tuple[Upstream, ...]] = {}  # listed at the last good poll, up or not
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._missed_at = 0.0
        self.loader: Loader | None = None  # on demand: what starts a model nobody serves
        self.aliases: dict[str, str] = {}  # other names for served names (on demand: profile ids)

    # The primary's face, as the switcher and the status pages know the upstream.
    @property
    def state(self) -> UpstreamState:
        return self.primary.state

    @property
    def origin(self) -> str:
        return self.primary.origin

    @property
    def public_url(self) -> str:
        return self.primary.public_url

    @property
    def public_origin(self) -> str:
        return self.primary.public_origin

    @property
    def auth_headers(self) -> dict[str, str]:
        """What the gateway sends the primary to authenticate itself (VLLM_API_KEY)."""
        return self.primary.auth

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "registry not started"
        return self._session

    @property
    def several(self) -> bool:
        return len(self.upstreams) > 1

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.cfg.max_connections, limit_per_host=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # relay bytes as sent, compressed or not
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.connect_timeout),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )
        await self.refresh()
        tasks = [self._poll(), self._probe(), self.watchdog.run()]
        if self.several and self.cfg.metrics_interval > 0:
            tasks.append(self._scrape())
        self._tasks = [asyncio.create_task(t, name="gwproxy-upstreams") for t in tasks]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # ---- background ----------------------------------------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval)
            await self.refresh()

    async def _scrape(self) -> None:
        while True:
            await asyncio.gather(*(u.scrape(self.session) for u in self.upstreams))
            await asyncio.sleep(self.cfg.metrics_interval)

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.probe_interval)
            now = time.monotonic()
            due = [u for u in self.upstreams if u.ejected_until is not None and now >= u.ejected_until]
            if due:
                answers = await asyncio.gather(*(u.healthy(self.session, PROBE_SECONDS) for u in due))
                for u, ok in zip(due, answers, strict=True):
                    if ok:
                        u.restore()
                        await u.refresh(self.session)
                self._index()

    async def refresh(self) -> UpstreamState:
        """Ask every upstream which models it serves (at once); never raises. The primary's
        state is returned (what a model switch and readiness look at)."""
        await asyncio.gather(*(u.refresh(self.session) for u in self.upstreams))
        self._index()
        return self.primary.state

    def _index(self) -> None:
        serving: dict[str, list[Upstream]] = {}
        known: dict[str, list[Upstream]] = {}
        for u in self.upstreams:
            for name in u.state.models:
                known.setdefault(name, []).append(u)
                if u.state.reachable:
                    serving.setdefault(name, []).append(u)
        self._serving = {name: tuple(us) for name, us in serving.items()}
        self._known = {name: tuple(us) for name, us in known.items()}

    async def ready(self, served_name: str | None) -> bool:
        """Whether the primary is up (``/health`` answers 200) and, with ``served_name``, serves
        that model (``/v1/models``, which refreshes every upstream's state too): what a model
        switch waits for."""
        if not await self.primary.healthy(self.session, PROBE_SECONDS):
            return False
        if served_name is None:
            return True
        state = await self.refresh()
        return state.reachable and served_name in state.models

    # ---- reading -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Every served name, the primary's first, each once."""
        seen: dict[str, None] = {}
        for u in self.upstreams:
            for name in u.state.models:
                seen.setdefault(name)
        return list(seen)

    def cards(self) -> list[dict[str, Any]]:
        """Every served model's card as its first upstream sent it, each name once; then, on
        demand, those of the models that could be loaded."""
        seen: dict[str, dict[str, Any]] = {}
        for u in self.upstreams:
            for card in u.state.cards:
                seen.setdefault(str(card["id"]), card)
        if self.loader is not None:
            for card in self.loader.cards():
                seen.setdefault(str(card["id"]), card)
        return list(seen.values())

    def serving(self, model: str) -> tuple[Upstream, ...]:
        """The upstreams serving ``model``: reachable at their last poll (ejected ones included:
        the balancer leaves them out)."""
        return self._serving.get(model, ())

    def default_group(self) -> tuple[Upstream, ...]:
        """Where a request naming no model goes: the replicas of what ``current`` means."""
        models = self.primary.state.models or tuple(self.models())
        return (self._serving.get(models[0]) or (self.primary,)) if models else (self.primary,)

    # ---- upstreams that come and go (models loaded on demand) -----------------------------------

    def attach(self, target: UpstreamTarget, state: UpstreamState | None = None) -> Upstream:
        """Add an upstream (a model server the gateway just started), with what it serves."""
        upstream = Upstream(target, self.cfg)
        if state is not None:
            upstream.state = state
        self.upstreams = (*self.upstreams, upstream)
        self._index()
        return upstream

    def detach(self, name: str) -> Upstream | None:
        """Take an upstream out: no request is sent there from now on (those in flight finish)."""
        found = next((u for u in self.upstreams if u.name == name and u is not self.primary), None)
        if found is not None:
            self.upstreams = tuple(u for u in self.upstreams if u is not found)
            self._index()
        return found

    async def group_for(
        self, model: str, principal: Principal | None = None, gone: Callable[[], bool] = lambda: False
    ) -> tuple[Upstream, ...]:
        """The upstreams serving ``model``. Else those that served it when last asked (down or
        ejected now: the request gets their failure, or the balancer tries them anyway); an
        unknown name refreshes the lists (at most once a second), then goes to the ``loader``
        (on demand: a profile is started for it; ``principal`` is who asks, ``gone`` whether the
        caller has left) and is otherwise ``ModelNotFound`` — unless no upstream answers at all,
        when the primary is tried (its failure is the answer)."""
        found = self._serving.get(model)
        if found:
            return found
        now = time.monotonic()
        if now - self._missed_at >= MISS_REFRESH_SECONDS:
            self._missed_at = now
            await self.refresh()
            found = self._serving.get(model)
            if found:
                return found
        found = self._known.get(model)
        if found:
            return found
        if self.loader is not None and await self.loader(model, principal, gone):
            found = self._serving.get(model)
            if found:
                return found
        if not any(u.state.reachable for u in self.upstreams):
            return (self.primary,)
        raise ModelNotFound(model, [m for m in self.models() if principal is None or principal.may_use(m)])

    def resolve(self, model: str) -> str:
        """The served name a request's ``model`` stands for (aliases resolved)."""
        if model not in ALIASES:
            return self.aliases.get(model, model) if self.aliases else model
        models = self.primary.state.models or tuple(self.models())
        if models:  # the last served name known (one failed poll does not unname it)
            return models[0]
        state = self.primary.state
        if not any(u.state.reachable for u in self.upstreams):
            raise ModelNotReady(
                f"model alias '{model}' cannot be resolved: the upstream {self.primary.public_url} is unreachable "
                f"({state.error or 'no answer yet'}); is vLLM running there?"
            )
        raise ModelNotReady(
            f"model alias '{model}' cannot be resolved: the upstream {self.primary.public_url} answers but serves "
            "no model yet (still loading?)"
        )

    def label(self, model: str | None) -> str:
        """A bounded metric label: a served model's name, else ``other``."""
        if model is None:
            return "-"
        return model if model in self._known else "other"

    def counts(self) -> list[UpstreamCounts]:
        """Each upstream's counters and state, for ``/metrics``."""
        return [
            UpstreamCounts(u.name, u.requests, dict(u.errors), u.in_flight, u.ejections, u.state.reachable, u.ejected)
            for u in self.upstreams
        ]

    def public(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [u.public(now) for u in self.upstreams]


@asynccontextmanager
async def open_upstream(
    cfg: UpstreamConfig, targets: tuple[UpstreamTarget, ...], managed: bool = False
) -> AsyncIterator[UpstreamRegistry]:
    """The upstreams, polled for the models they serve, with their connection pool; ``managed``
    when the gateway's model manager starts what serves at the first."""
    registry = UpstreamRegistry(cfg, targets, managed)
    await registry.start()
    try:
        yield registry
    finally:
        await registry.close()
