"""Upstream: one vLLM server the gateway forwards to, and what the gateway knows of it.

What it serves (its ``/v1/models``, polled by the registry), how loaded it is (the gateway's own
requests in flight there, plus vLLM's ``vllm:num_requests_waiting`` and
``vllm:kv_cache_usage_perc`` scraped from its ``/metrics``), and its health: consecutive
failures (refused connections, connect timeouts, 502/503 answers) eject it for
``upstream.eject_seconds``, after which a ``/health`` probe that answers 200 brings it back.
Its counters (requests, errors by kind, ejections) are read by ``/metrics`` at scrape time.
Only the event loop writes any of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gwproxy import log
from gwproxy.config import UpstreamConfig, UpstreamTarget

_log = log.get("gwproxy.upstream")

DOWN_LOG_POLLS = 12  # while down, said again every this many polls
KV_LOAD = 4.0  # a full KV cache weighs as much as this many requests in flight
STALE_LOAD = 64.0  # metrics older than their freshness bound: counted as this busy
STALE_INTERVALS = 3  # scrapes missed before metrics are stale
_WAITING = b"vllm:num_requests_waiting"
_KV = (b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc")  # the second: vLLM before 0.10


@dataclass(frozen=True, slots=True)
class UpstreamState:
    reachable: bool = False
    models: tuple[str, ...] = ()
    checked_at: float | None = None  # wall-clock seconds
    error: str | None = None
    cards: tuple[dict[str, Any], ...] = ()  # the model cards of its /v1/models, as sent


class Upstream:
    def __init__(self, target: UpstreamTarget, cfg: UpstreamConfig, managed: bool = False) -> None:
        self.name = target.name
        self.cfg = cfg
        self.managed = managed  # the gateway starts what serves here: down at start is expected
        self.weight = target.weight
        self.origin = target.origin
        self.v1_url = target.v1_url
        self.public_origin = target.public_origin
        self.public_url = target.public_v1_url
        self.auth = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        self.state = UpstreamState()
        # load
        self.in_flight = 0
        self.last_used = time.monotonic()  # when a request last finished here (idle time, eviction order)
        self.waiting = 0.0
        self.kv = 0.0
        self.metrics_at: float | None = None  # monotonic time of the last good scrape
        # health
        self.failures = 0  # consecutive
        self.ejected_until: float | None = None  # monotonic; None while in service
        self.down_logged = 0.0
        # counters
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.ejections = 0

    # ---- load ----------------------------------------------------------------------------------

    def load(self, now: float) -> float:
        """Its weighted load: requests in flight through the gateway, vLLM's queue and KV cache
        use (when scraped), a stale scrape counted as busy; divided by its weight."""
        busy = self.in_flight + self.waiting + KV_LOAD * self.kv
        if self.metrics_at is not None and now - self.metrics_at > STALE_INTERVALS * self.cfg.metrics_interval:
            busy += STALE_LOAD
        return busy / self.weight

    def metrics_fresh(self, now: float) -> bool | None:
        if self.metrics_at is None:
            return None
        return now - self.metrics_at <= STALE_INTERVALS * self.cfg.metrics_interval

    # ---- health --------------------------------------------------------------------------------

    @property
    def ejected(self) -> bool:
        return self.ejected_until is not None

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self, kind: str) -> None:
        """A failure (before the answer, or the connection lost or silent during it): counted,
        and the upstream ejected when it is the ``eject_after``-th in a row."""
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.failures += 1
        if self.failures >= self.cfg.eject_after and self.ejected_until is None:
            self.ejected_until = time.monotonic() + self.cfg.eject_seconds
            self.ejections += 1
            _log.warning(
                "upstream ejected",
                upstream=self.name,
                url=self.public_url,
                failures=self.failures,
                kind=kind,
                cooldown_s=self.cfg.eject_seconds,
            )

    def restore(self) -> None:
        self.ejected_until = None
        self.failures = 0
        _log.info("upstream back in service", upstream=self.name, url=self.public_url)

    # ---- asking it -----------------------------------------------------------------------------

    async def refresh(self, session: aiohttp.ClientSession) -> UpstreamState:
        """Ask which models it serves; never raises. Says so in the log when that changes."""
        url = self.v1_url + "/models"
        try:
            limit = aiohttp.ClientTimeout(total=self.cfg.connect_timeout * 2)
            async with session.get(url, headers=self.auth, timeout=limit) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ValueError(self._bad_status(resp.status))
                cards = tuple(c for c in orjson.loads(body).get("data") or [] if isinstance(c, dict) and "id" in c)
                models = tuple(str(c["id"]) for c in cards)
            new = UpstreamState(True, models, time.time(), None, cards)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, AttributeError) as exc:
            error = log.redact(f"{type(exc).__name__}: {exc}")
            new = UpstreamState(False, self.state.models, time.time(), error, self.state.cards)
        self._say(new)
        self.state = new
        return new

    def _say(self, new: UpstreamState) -> None:
        old = self.state
        changed = (new.reachable, new.models) != (old.reachable, old.models)
        first = old.checked_at is None
        now = time.monotonic()
        where = {"upstream": self.name, "url": self.public_url}
        if new.reachable and (changed or first):
            _log.info("upstream up", **where, models=list(new.models))
        elif not new.reachable and first and self.managed:
            self.down_logged = now  # the model manager is about to start it: said as such, not as a fault
            _log.info("upstream not up yet: the model manager starts the model", **where)
        elif not new.reachable and (
            changed or first or now - self.down_logged >= self.cfg.poll_interval * DOWN_LOG_POLLS
        ):
            self.down_logged = now
            _log.warning("upstream unreachable", **where, error=new.error)

    def _bad_status(self, status: int) -> str:
        said = f"GET {self.public_url}/models answered {status}"
        if status == 404 and not self.v1_url.endswith("/v1"):
            return f"{said}: did you mean {self.public_origin}/v1? (vLLM serves its API under /v1)"
        return said

    async def healthy(self, session: aiohttp.ClientSession, limit: float) -> bool:
        """Whether its ``/health`` answers 200 within ``limit`` seconds."""
        try:
            timeout = aiohttp.ClientTimeout(total=limit)
            async with session.get(self.origin + "/health", headers=self.auth, timeout=timeout) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def scrape(self, session: aiohttp.ClientSession) -> None:
        """Read vLLM's queue length and KV cache use from its ``/metrics``; on failure the old
        figures stay and age (stale figures count as busy)."""
        try:
            timeout = aiohttp.ClientTimeout(total=max(1.0, self.cfg.metrics_interval))
            async with session.get(self.origin + "/metrics", headers=self.auth, timeout=timeout) as r:
                if r.status != 200:
                    return
                text = await r.read()
        except (aiohttp.ClientError, TimeoutError):
            return
        self.waiting, self.kv = read_load(text)
        self.metrics_at = time.monotonic()

    def public(self, now: float) -> dict[str, Any]:
        """Its state as ``/health`` and ``/api/models/status`` show it."""
        state = self.state
        status = "ejected" if self.ejected else ("up" if state.reachable else "down")
        return {
            "name": self.name,
            "url": self.public_url,
            "status": status,
            "models": list(state.models),
            "weight": self.weight,
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "kv_cache_usage": self.kv,
            "metrics_fresh": self.metrics_fresh(now),
            "consecutive_failures": self.failures,
            "ejected_for_s": round(max(0.0, self.ejected_until - now), 3) if self.ejected_until else None,
            "checked_at": state.checked_at,
            "error": state.error,
        }


def read_load(text: bytes) -> tuple[float, float]:
    """(requests waiting, KV cache use 0–1) from vLLM's Prometheus text: waiting summed over its
    series (one per engine), the KV figure the highest."""
    waiting, kv = 0.0, 0.0
    for line in text.splitlines():
        if _named(line, _WAITING):
            waiting += _value(line)
        elif _named(line, _KV[0]) or _named(line, _KV[1]):
            kv = max(kv, _value(line))
    return waiting, kv


def _named(line: bytes, name: bytes) -> bool:
    return line.startswith(name) and line[len(name) : len(name) + 1] in (b"{", b" ")


def _value(line: bytes) -> float:
    try:
        return float(line.rsplit(None, 1)[-1])
    except (ValueError, IndexError):
        return 0.0
