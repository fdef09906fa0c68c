"""Fleet: the models loaded on demand, beside the one the switcher serves.

With ``switch.on_demand`` a request naming a profile (its id or a served name) that nothing
serves starts it as an instance of its own: planned (``planner.place``) onto the GPUs with room
beside what runs — the switched model and the other instances — on a port from
``switch.port_range``, with ``CUDA_VISIBLE_DEVICES`` set to its GPUs and its share of their
memory as ``--gpu-memory-utilization``. Once ready it is an upstream like any other (the
registry routes to it); the request that caused the load, and every other one for that model
meanwhile, waits for the one load (up to ``switch.hold_seconds``, then 503 + ``Retry-After``),
while the models already up keep serving.

When memory is short, instances are evicted: only idle ones (no request in flight), never a
``pinned`` profile, never one ``swappable: false``, never one loaded less than
``switch.min_residency`` seconds ago; the cheapest to bring back first (its weights: a cold
start reads them again), the least recently used among equals; only as many as the load needs.
If the model cannot fit even with every evictable instance gone, the load is refused with the
numbers; if busy instances are in the way, the load waits for them (within the hold). A
profile's ``ttl`` unloads its instance after that many idle seconds. ``POST /api/models/load``
and ``/unload`` do the same for an admin. Loads are started only for callers still connected.

Each instance is a process (the process backend) in ``<state_dir>/fleet/<profile>/``, recorded
there with its port and GPUs, so a restarted gateway adopts what is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from gwproxy import log
from gwproxy.config import SwitchConfig, UpstreamTarget
from gwproxy.errors import Conflict, Forbidden, ModelNotReady, NotFound, ServiceUnavailable
from gwproxy.metrics import Metrics
from gwproxy.principal import Principal
from gwproxy.proxy.registry import UpstreamRegistry
from gwproxy.proxy.upstream import Upstream
from gwproxy.switcher import planner
from gwproxy.switcher.backend import Launch, follow
from gwproxy.switcher.hosts import Host
from gwproxy.switcher.instances import SLEEPER_BYTES, LoadFailed, LoadRefused, Resident, bindable, retrieve
from gwproxy.switcher.planner import Placement
from gwproxy.switcher.profiles import Profile, ProfileSet

_log = log.get("gwproxy.fleet")

PLACE_RETRY = 0.25  # seconds between placement attempts while busy instances are in the way
REAP_INTERVAL = 1.0


class Fleet:
    def __init__(
        self,
        cfg: SwitchConfig,
        registry: UpstreamRegistry,
        profiles: Callable[[], ProfileSet],
        hosts: list[Host],
        primary: Callable[[], Placement | None],
        metrics: Metrics,
        publish: Callable[[dict[str, Any]], None] = lambda event: None,
    ) -> None:
        assert hosts, "at least one host"
        self.cfg = cfg
        self.registry = registry
        self._profiles = profiles
        self.hosts = {h.name: h for h in hosts}
        self.home = hosts[0]  # where the switched model runs
        self._primary = primary  # what the switched model claims
        self.metrics = metrics
        self._publish = publish  # to the /api/models/events subscribers
        self.residents: dict[str, Resident] = {}
        self._loads: dict[str, asyncio.Task[Resident]] = {}
        self._plan_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self.roles = cfg.on_demand_role_set()
        self._waiting: dict[str, int] = {}  # requests waiting for each profile's load
        self.interrupted: list[str] = []  # loads or instances a gateway restart lost, in words (status)

    # ---- reading -------------------------------------------------------------------------------

    def profile_for(self, name: str) -> Profile | None:
        profiles = self._profiles()
        return profiles.profiles.get(name) or profiles.by_served_name(name)

    def claims(self, leaving: frozenset[str] = frozenset(), sleeping: frozenset[str] = frozenset()) -> list[Placement]:
        """What holds GPU memory now: the switched model and every instance (but ``leaving``;
        those in ``sleeping`` as they would hold it asleep)."""
        if sleeping:
            out = [
                Placement(pid, r.placement.gpus, SLEEPER_BYTES, r.placement.tensor_parallel, r.placement.host)
                if pid in sleeping else r.claim
                for pid, r in self.residents.items()
                if pid not in leaving
            ]  # fmt: skip
            return out + self._primary_claims()
        out = [r.claim for pid, r in self.residents.items() if pid not in leaving]
        return out + self._primary_claims()

    def _primary_claims(self) -> list[Placement]:
        primary = self._primary()
        if primary is None or primary.profile_id in self.residents:
            return []
        return [Placement(primary.profile_id, primary.gpus, primary.per_gpu, primary.tensor_parallel, self.home.name)]

    def _place(self, profile: Profile, claims: list[Placement]) -> tuple[Placement | None, planner.Plan]:
        """The first host (in the configured order) with room for ``profile`` beside ``claims``;
        the plan is that host's (the first host's when it fits none)."""
        first: planner.Plan | None = None
        for host in self.hosts.values():
            mine = [c for c in claims if c.host == host.name]
            placement, fit = planner.place(profile, host.hardware(), mine, self.cfg.reserve_gib)
            if placement is not None:
                p = placement
                return Placement(p.profile_id, p.gpus, p.per_gpu, p.tensor_parallel, host.name), fit
            if first is None or (fit.fits and not first.fits):
                first = fit
        assert first is not None
        return None, first

    def _shortfall(self, fit: planner.Plan, profile: Profile) -> str:
        claims = self.claims()
        share = profile.gpu_memory_utilization
        return "; ".join(
            (f"{h.name}: " if len(self.hosts) > 1 else "")
            + planner.shortfall(fit, h.hardware(), [c for c in claims if c.host == h.name], share)
            for h in self.hosts.values()
        )

    def public(self) -> list[dict[str, Any]]:
        return [r.public() for r in self.residents.values()]

    def _said(self, resident: Resident, change: str) -> None:
        """Tell the event stream what happened to an instance (``change``: in words)."""
        self._publish({"instance": resident.public(), "change": change})

    def aliases(self) -> dict[str, str]:
        """Profile ids that differ from their served name → the served name (a request may name
        either; vLLM knows only the served name)."""
        return {p.id: p.served_name for p in self._profiles().profiles.values() if p.id != p.served_name}

    def cards(self) -> list[dict[str, Any]]:
        """A card per profile not running, as ``/v1/models`` lists it: vLLM's fields, and a
        ``gwproxy`` object saying it loads on demand."""
        primary = self._primary()
        out = []
        for p in self._profiles().profiles.values():
            if p.id in self.residents or (primary is not None and primary.profile_id == p.id):
                continue
            out.append({
                "id": p.served_name, "object": "model", "created": 0, "owned_by": "gwproxy", "root": p.model,
                "parent": None, "max_model_len": p.max_model_len,
                "gwproxy": {"state": "loadable", "profile_id": p.id, "name": p.name},
            })  # fmt: skip
        return out

    # ---- the request path ----------------------------------------------------------------------

    async def __call__(self, model: str, principal: Principal | None, gone: Callable[[], bool]) -> bool:
        """The registry's loader: start (or join) the load of the profile ``model`` names and wait
        for it, up to ``hold_seconds``. False when no profile is named so."""
        profile = self.profile_for(model)
        if profile is None:
            return False
        primary = self._primary()
        if primary is not None and primary.profile_id == profile.id:
            return True  # the switched model (the gate holds requests while it changes)
        if principal is not None and not principal.is_admin and principal.role not in self.roles:
            raise Forbidden(
                f"the model `{model}` is not loaded and your role may not load models (switch.on_demand_roles)",
                code="load_not_allowed",
            )
        resident = self.residents.get(profile.id)
        if resident is not None and resident.state == "ready":
            return True
        task = self._loads.get(profile.id)
        if task is None:
            if gone():
                return False  # never start a load for a caller that has left
            task = self.load(profile.id)
        self._waiting[profile.id] = self._waiting.get(profile.id, 0) + 1
        try:
            await asyncio.wait_for(asyncio.shield(task), self.cfg.hold_seconds)
        except TimeoutError:
            phase = self.residents[profile.id].phase if profile.id in self.residents else "waiting for room"
            raise ModelNotReady(
                f"the model `{model}` is loading ({phase}); retry shortly", retry_after=self.cfg.retry_after
            ) from None
        except LoadRefused as exc:
            if exc.never:
                raise ServiceUnavailable(
                    str(exc), retry_after=self.cfg.retry_after, code="model_does_not_fit"
                ) from None
            raise ModelNotReady(str(exc), retry_after=self.cfg.retry_after) from None
        except LoadFailed as exc:
            raise ServiceUnavailable(str(exc), retry_after=self.cfg.retry_after, code="model_load_failed") from None
        finally:
            self._waiting[profile.id] -= 1
        return True

    def loadable(self, model: str) -> bool:
        return self.profile_for(model) is not None

    def progress(self, model: str) -> str:
        """``loading NAME: PHASE; N request(s) waiting`` — what a waiting stream's comments say."""
        profile = self.profile_for(model)
        if profile is None:
            return f"no model {model}"
        resident = self.residents.get(profile.id)
        phase = resident.phase if resident is not None else "waiting for room on the GPUs"
        return f"loading {model}: {phase}; {self._waiting.get(profile.id, 0)} request(s) waiting for it"

    # ---- commands ------------------------------------------------------------------------------

    def load(self, profile_id: str) -> asyncio.Task[Resident]:
        """Start loading ``profile_id`` (or return the load under way)."""
        if profile_id not in self._profiles().profiles:
            raise NotFound(f"no profile '{profile_id}' (GET /api/models/profiles lists them)", param="profile_id")
        task = self._loads.get(profile_id)
        if task is None:
            task = asyncio.create_task(self._load(profile_id), name=f"gwproxy-load-{profile_id}")
            self._loads[profile_id] = task
            task.add_done_callback(lambda t: self._loads.pop(profile_id, None))
            task.add_done_callback(retrieve)
        return task

    async def unload(self, profile_id: str, why: str = "unloaded") -> None:
        resident = self.residents.get(profile_id)
        if resident is None:
            raise NotFound(f"'{profile_id}' is not loaded on demand", param="profile_id")
        if resident.state == "loading":
            raise Conflict(f"'{profile_id}' is loading; unload it once it is ready", code="model_loading")
        await self._stop(resident, why)

    async def make_room(self, profile: Profile, claim: Placement) -> None:
        """Before the switched model becomes ``profile`` with ``claim``: unload its own on-demand
        instance, then the instances on its GPUs (least recently used first) until it fits."""
        async with self._plan_lock:
            own = self.residents.get(profile.id)
            if own is not None and own.state != "loading":
                await self._stop(own, "it becomes the switched model")
            hardware = self.home.hardware()
            while True:
                home = [c for c in self.claims() if c.host == self.home.name]
                free = planner.free_memory(hardware, home, profile.gpu_memory_utilization)
                if all(free.get(i, 0) >= claim.per_gpu for i in claim.gpus):
                    return
                mine = set(claim.gpus)
                in_way = [
                    r
                    for r in self.residents.values()
                    if r.host is self.home and r.state in ("ready", "sleeping") and mine & set(r.placement.gpus)
                ]
                if not in_way:
                    return  # what is left is loading; the switch starts anyway, as before
                in_way.sort(key=lambda r: (r.busy, -r.idle_for))
                await self._stop(in_way[0], f"the switch to '{profile.id}' needs its GPUs")

    # ---- loading -------------------------------------------------------------------------------

    async def _load(self, profile_id: str) -> Resident:
        existing = self.residents.get(profile_id)
        if existing is not None and existing.state == "ready":
            return existing
        if existing is not None and existing.state == "sleeping":
            woken = await self._wake(existing)
            if woken:
                return existing
        profile = self._profiles().profiles[profile_id]
        deadline = time.monotonic() + self.cfg.hold_seconds
        while True:
            async with self._plan_lock:
                try:
                    resident = await self._reserve(profile)
                    break
                except LoadRefused as exc:
                    if exc.never or time.monotonic() >= deadline:
                        _log.warning("model not loaded", profile=profile_id, reason=str(exc))
                        raise
            await asyncio.sleep(PLACE_RETRY)
        started = time.monotonic()
        try:
            await self._bring_up(resident)
        except LoadFailed as exc:
            resident.state, resident.error = "failed", str(exc)
            self.residents.pop(profile_id, None)
            self._said(resident, "failed")
            _log.error("on-demand load failed", profile=profile_id, error=str(exc))
            raise
        seconds = time.monotonic() - started
        resident.last_start = {"kind": "cold", "seconds": round(seconds, 3)}
        self.metrics.observe_load(profile_id, seconds)
        self._said(resident, f"ready after {seconds:.1f}s")
        _log.info("model loaded on demand", profile=profile_id, gpus=list(resident.placement.gpus),
                  port=resident.port, seconds=round(seconds, 2))  # fmt: skip
        return resident

    async def _reserve(self, profile: Profile) -> Resident:
        """Place ``profile`` (evicting what it takes) and record it as loading."""
        placement, fit = self._place(profile, self.claims())
        if placement is None and fit.fits:

            def fits(claims: list[Placement]) -> bool:
                return self._place(profile, claims)[0] is not None

            victims = self._victims(fits)
            if victims is None:
                everyone = frozenset(self.residents)
                alone, _ = self._place(profile, self.claims(everyone))
                why = self._shortfall(fit, profile)
                if alone is None:
                    raise LoadRefused(
                        f"'{profile.id}' cannot fit beside the switched model even with every on-demand model "
                        f"unloaded: {why}",
                        never=True,
                    )
                raise LoadRefused(f"'{profile.id}' waits for room: {why}; the models in the way are busy, "
                                  "pinned, not swappable or loaded too recently", never=False)  # fmt: skip
            await self._evict(victims, profile.id)
            placement, fit = self._place(profile, self.claims())
        if placement is None:
            raise LoadRefused(f"'{profile.id}' does not fit: {fit.reason}", never=True)
        host = self.hosts[placement.host]
        port = self._free_port(host)
        resident = Resident(profile, placement, port, host.backend(profile, placement, port), host)
        self.residents[profile.id] = resident
        where = f"{host.name} " if len(self.hosts) > 1 else ""
        self._said(resident, f"placed on {where}GPU(s) {', '.join(map(str, placement.gpus))}, starting")
        return resident

    def _victims(self, fits: Callable[[list[Placement]], bool]) -> list[tuple[Resident, str]] | None:
        """The fewest evictions (instance, ``"sleep"`` or ``"stop"``) after which ``fits`` holds:
        first put to sleep the idle models that sleep (their host RAM allowing), then stop idle
        ones, then stop sleepers; the cheapest to bring back first within each (weights to read
        again), the least recently used among equals. None when even all of them would not do."""
        now = time.monotonic()
        movable = [
            r
            for r in self.residents.values()
            if r.state in ("ready", "sleeping")
            and not r.busy
            and not r.profile.pinned
            and r.profile.swappable
            and (r.state == "sleeping" or now - r.loaded_at >= self.cfg.min_residency)
        ]
        host_left = int(self.cfg.sleep_host_gib * 2**30) - sum(r.host_bytes for r in self.residents.values())
        plan: list[tuple[Resident, str, int]] = []
        for r in movable:
            if r.state == "ready" and r.profile.sleep_level:
                needs_host = planner.weights_bytes(r.profile) if r.profile.sleep_level == 1 else 0
                if needs_host <= host_left:
                    host_left -= needs_host
                    plan.append((r, "sleep", 0))
                    continue
            plan.append((r, "stop", 2 if r.state == "sleeping" else 1))
        plan.sort(key=lambda x: (x[2], planner.weights_bytes(x[0].profile), -x[0].idle_for))

        def claims_after(chosen: list[tuple[Resident, str, int]]) -> list[Placement]:
            stopping = frozenset(r.profile.id for r, action, _ in chosen if action == "stop")
            sleeping = frozenset(r.profile.id for r, action, _ in chosen if action == "sleep")
            return self.claims(stopping, sleeping)

        chosen: list[tuple[Resident, str, int]] = []
        for step in plan:
            chosen.append(step)
            if fits(claims_after(chosen)):
                break
        else:
            return None
        for step in list(chosen[:-1]):  # drop any the room does not need after all
            if fits(claims_after([c for c in chosen if c is not step])):
                chosen.remove(step)
        return [(r, action) for r, action, _ in chosen]

    async def _evict(self, victims: list[tuple[Resident, str]], for_whom: str) -> None:
        for victim, action in victims:
            if action == "sleep":
                await self._sleep(victim, f"put to sleep for '{for_whom}'")
            else:
                await self._stop(victim, f"evicted for '{for_whom}'")

    async def _sleep(self, resident: Resident, why: str) -> None:
        """vLLM's sleep: out of rotation, its GPU memory freed but for ``SLEEPER_BYTES``; the process
        stays (level 1 keeps the weights in host RAM). A failed sleep stops it instead."""
        level = resident.profile.sleep_level
        self.registry.detach(resident.profile.id)
        resident.upstream = None
        try:
            async with self.registry.session.post(
                f"{resident.base}/sleep", params={"level": str(level)},
                timeout=aiohttp.ClientTimeout(total=self.cfg.stop_timeout * 4),
            ) as r:  # fmt: skip
                if r.status != 200:
                    raise aiohttp.ClientResponseError(r.request_info, (), status=r.status, message=await r.text())
        except (aiohttp.ClientError, TimeoutError) as exc:
            _log.warning("sleep failed: stopping instead", profile=resident.profile.id, error=str(exc))
            await self._stop(resident, f"{why} (sleep failed)")
            return
        resident.state, resident.phase, resident.asleep = "sleeping", f"asleep (level {level})", level
        resident.loaded_at = time.monotonic()  # idle (for its ttl) from now
        _log.info("model put to sleep", profile=resident.profile.id, level=level, reason=why)
        self._said(resident, why)

    async def _wake(self, resident: Resident) -> bool:
        """Wake a sleeping instance where it is (room made on its GPUs first), warm it with one
        token, route to it again. False when its GPUs cannot be freed for it: it is stopped, and
        the caller starts it afresh wherever it fits."""
        profile, gpus, host = resident.profile, resident.placement.gpus, resident.host
        hardware = host.hardware()

        def fits(claims: list[Placement]) -> bool:
            mine = [c for c in claims if c.host == host.name]
            free = planner.free_memory(hardware, mine, profile.gpu_memory_utilization)
            return all(free.get(i, 0) >= 0 for i in gpus)

        async with self._plan_lock:
            awake = [c if c.profile_id != profile.id else resident.placement for c in self.claims()]
            if not fits(awake):
                others = self._victims(
                    lambda claims: fits([c if c.profile_id != profile.id else resident.placement for c in claims])
                )
                if others is None or any(r is resident for r, _ in others):
                    await self._stop(resident, "no room to wake it where it sleeps")
                    return False
                await self._evict(others, profile.id)
            resident.state, resident.phase, resident.asleep = "loading", "waking", 0
        started = time.monotonic()
        base = resident.base
        try:
            limit = aiohttp.ClientTimeout(total=profile.startup_timeout)
            async with self.registry.session.post(base + "/wake_up", timeout=limit) as r:
                if r.status != 200:
                    raise LoadFailed(f"'{profile.id}' did not wake: /wake_up answered {r.status}")
            warm = {"model": profile.served_name, "prompt": "Hi", "max_tokens": 1}
            async with self.registry.session.post(base + "/v1/completions", json=warm, timeout=limit) as r:
                await r.read()  # a one-token warm-up before traffic
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self._stop(resident, f"waking failed: {type(exc).__name__}")
            raise LoadFailed(f"'{profile.id}' did not wake: {type(exc).__name__}: {exc}") from exc
        await self._await_ready(resident)
        seconds = time.monotonic() - started
        resident.last_start = {"kind": "wake", "seconds": round(seconds, 3)}
        self.metrics.observe_wake(profile.id, seconds)
        _log.info("model woken", profile=profile.id, seconds=round(seconds, 2))
        self._said(resident, f"woken in {seconds:.2f}s")
        return True

    def _free_port(self, host: Host) -> int:
        """The first port of ``switch.port_range`` no instance on ``host`` holds (and, on this
        machine, nothing listens on)."""
        used = {r.port for r in self.residents.values() if r.host is host}
        for port in self.cfg.ports():
            if port not in used and (not host.local or bindable(port)):
                return port
        raise LoadRefused(f"no free port in switch.port_range {self.cfg.port_range} on {host.name}", never=False)

    async def _bring_up(self, resident: Resident) -> None:
        profile, placement = resident.profile, resident.placement
        hardware = resident.host.hardware()
        launch = Launch(profile, None, placement.tensor_parallel, self.cfg.vllm_host, resident.port,
                        placement.utilization(hardware), placement.gpus)  # fmt: skip
        try:
            resident.instance = await resident.backend.start(launch)
        except Exception as exc:  # the command is missing, the port taken …
            raise LoadFailed(f"could not start '{profile.id}': {type(exc).__name__}: {exc}") from exc
        resident.host.record(placement, resident.port)
        await self._await_ready(resident)

    async def _await_ready(self, resident: Resident) -> None:
        """Wait until the instance answers ``/health`` and lists its served name, then route to it."""
        profile = resident.profile
        assert resident.instance is not None
        resident.phase = "loading"
        target = UpstreamTarget(profile.id, f"{resident.base}/v1")
        probe = Upstream(target, self.registry.cfg)
        deadline = time.monotonic() + profile.startup_timeout
        follower = asyncio.create_task(self._follow(resident), name=f"gwproxy-load-log-{profile.id}")
        try:
            while True:
                if await probe.healthy(self.registry.session, 2.0):
                    state = await probe.refresh(self.registry.session)
                    if state.reachable and profile.served_name in state.models:
                        break
                now = await resident.backend.state(resident.instance)
                if not now.running:
                    raise LoadFailed(f"'{profile.id}' exited with code {now.exit_code} while loading")
                if time.monotonic() > deadline:
                    await resident.backend.stop(resident.instance, self.cfg.stop_timeout)
                    raise LoadFailed(f"'{profile.id}' was not ready within {profile.startup_timeout:g}s")
                await asyncio.sleep(self.cfg.ready_poll)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        resident.upstream = self.registry.attach(target, probe.state)
        resident.state, resident.phase, resident.progress = "ready", "ready", 1.0
        resident.loaded_at = time.monotonic()

    async def _follow(self, resident: Resident) -> None:
        """The load's phase and progress from the server's log lines, each step sent as an event."""
        assert resident.instance is not None

        def step(phase: str, fraction: float) -> None:
            if fraction > resident.progress:
                resident.phase, resident.progress = phase, fraction
                self._said(resident, phase)

        await follow(resident.backend, resident.instance, step)

    async def _stop(self, resident: Resident, why: str) -> None:
        resident.state = "stopping"
        self.registry.detach(resident.profile.id)  # no new request goes there
        self.residents.pop(resident.profile.id, None)
        _log.info("model unloaded", profile=resident.profile.id, reason=why)
        self._said(resident, why)
        if resident.instance is not None:
            await resident.backend.stop(resident.instance, self.cfg.stop_timeout)
        resident.host.forget(resident.profile.id)

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Adopt the instances a previous gateway left running on every host; then watch for
        idle ones."""
        self.registry.aliases = self.aliases()
        profiles = self._profiles().profiles
        for host in self.hosts.values():
            adopted = await host.adopt(profiles)
            self.interrupted += host.lost
            for found in adopted:
                pid = found.profile.id
                resident = Resident(found.profile, found.placement, found.port, found.backend, host,
                                    instance=found.instance)  # fmt: skip
                self.residents[pid] = resident
                _log.info("adopting a model loaded on demand", profile=pid, host=host.name, port=found.port)
                task = asyncio.create_task(self._adopt(resident), name=f"gwproxy-adopt-{pid}")
                self._loads[pid] = task
                task.add_done_callback(lambda t, pid=pid: self._loads.pop(pid, None))  # type: ignore[misc]
                task.add_done_callback(retrieve)
        self._reaper = asyncio.create_task(self._reap(), name="gwproxy-fleet-reaper")

    async def _adopt(self, resident: Resident) -> Resident:
        """A running instance a previous gateway started: routed to once it is ready (a load the
        restart interrupted is finished; one that dies meanwhile is reported and forgotten)."""
        try:
            await self._await_ready(resident)
        except LoadFailed as exc:
            self.residents.pop(resident.profile.id, None)
            resident.state, resident.error = "failed", str(exc)
            resident.host.forget(resident.profile.id)
            _log.error("adopted model failed", profile=resident.profile.id, error=str(exc))
            self.interrupted.append(f"'{resident.profile.id}' was adopted after a restart but failed: {exc}")
            self._said(resident, "failed")
            raise
        resident.phase = "ready (adopted)"
        self._said(resident, "adopted after a gateway restart")
        return resident

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            for resident in list(self.residents.values()):
                ttl = resident.profile.ttl
                if resident.state in ("ready", "sleeping") and ttl and resident.idle_for >= ttl:
                    await self._stop(resident, f"idle for {ttl:g}s (its ttl)")

    async def close(self, stop: bool) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for task in list(self._loads.values()):
            task.cancel()
        if stop:
            for resident in list(self.residents.values()):
                await self._stop(resident, "the gateway stops (switch.stop_on_exit)")
        for host in self.hosts.values():
            await host.close()
