"""Switcher: the single owner of the running model and of the switch job state machine.

::

    pending → validating → stopping → starting → loading → ready
                  │                       └──────┴── failed → rolling_back → ready (previous profile)
                  └── refused (does not fit; nothing was touched)

Only the job task changes ``state``, ``current`` and ``instance``; handlers call ``switch`` (which
starts a job, joins the running one for the same profile, or refuses with 409) and read
``status``. One job at a time. While a job runs the ``Gate`` holds new /v1 requests (they wait
up to ``switch.hold_seconds``, then get 503 with ``Retry-After``); requests in flight on the old
model get ``switch.drain_seconds`` to finish before it is stopped. Progress comes from the
instance's log lines (``backend.progress``); readiness is ``/health`` answering 200 and the
profile's served name listed by ``/v1/models``. A restarted gateway asks the backend what it
left running (``find``) and resumes from there; a switch it was in the middle of (``intent``) is
then resumed, or reported failed after ``intent.MAX_ATTEMPTS`` interruptions. Every change is
published to subscribers (the ``/api/models/events`` stream).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gwproxy import log
from gwproxy.config import SwitchConfig
from gwproxy.errors import Conflict, NotFound
from gwproxy.metrics import Metrics
from gwproxy.proxy.registry import UpstreamRegistry
from gwproxy.switcher import intent, planner
from gwproxy.switcher.backend import Backend, Instance, Launch, follow
from gwproxy.switcher.fleet import Fleet
from gwproxy.switcher.gate import Gate
from gwproxy.switcher.hardware import Hardware, HardwareSource
from gwproxy.switcher.job import Job, State
from gwproxy.switcher.planner import Placement, Plan
from gwproxy.switcher.profiles import Profile, ProfileSet

_log = log.get("gwproxy.switcher")


class SwitchFailed(Exception):
    """Bringing an instance up failed; the message says why (exit code, log tail, timeout)."""


class Switcher:
    def __init__(
        self,
        cfg: SwitchConfig,
        registry: UpstreamRegistry,
        backend: Backend | None,
        profiles: ProfileSet,
        read_hardware: HardwareSource,
        load_profiles: Callable[[], ProfileSet],
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.backend = backend
        self.profiles = profiles
        self.gate = Gate(cfg.retry_after)
        self.state = State.UNMANAGED if backend is None else State.STOPPED
        self.current: str | None = None  # profile id being served (or brought up)
        self.instance: Instance | None = None
        self.job: Job | None = None
        self.error: str | None = None  # why the backend is unusable, or an interrupted switch was given up
        self.boot: dict[str, Any] | None = None  # what boot started instead of the default, and why
        self._task: asyncio.Task[None] | None = None
        self._read_hardware = read_hardware
        self._load_profiles = load_profiles
        self._hardware: Hardware | None = None
        self._hardware_at = 0.0
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._log_tail: collections.deque[str] = collections.deque(maxlen=20)
        self._state_dir = Path(cfg.state_dir)
        self._intent_job: str | None = None  # the job whose intent is on disk
        self.metrics = metrics or Metrics()
        self.fleet: Fleet | None = None  # models loaded on demand beside this one (switch.on_demand)

    # ---- reading -------------------------------------------------------------------------------

    async def hardware(self, max_age: float = 5.0) -> Hardware:
        if self._hardware is None or time.monotonic() - self._hardware_at > max_age:
            self._hardware = await asyncio.get_running_loop().run_in_executor(None, self._read_hardware)
            self._hardware_at = time.monotonic()
        return self._hardware

    async def status(self) -> dict[str, Any]:
        up = self.registry.state
        return {
            "backend": self.backend.name if self.backend else None,
            "state": self.state.value,
            "current_profile": self.current if self.backend else self._unmanaged_profile(up.models),
            "instance": {"profile_id": self.instance.profile_id, "handle": self.instance.handle}
            if self.instance
            else None,
            "served_models": list(up.models),
            "upstream": {
                "url": self.registry.public_url,
                "reachable": up.reachable,
                "checked_at": up.checked_at,
                "error": up.error,
            },
            "upstreams": self.registry.public(),
            "on_demand": self.fleet is not None,
            "instances": self.fleet.public() if self.fleet else [],
            "interrupted": self.fleet.interrupted if self.fleet else [],
            "error": self.error,
            "boot": self.boot,
            "gate": {"open": self.gate.is_open, "reason": self.gate.reason or None, "in_flight": self.gate.inflight},
            "job": self.job.public() if self.job else None,
            "log_tail": list(self._log_tail)[-10:],
            "hardware": (await self.hardware()).public(),
        }

    def served(self) -> list[tuple[str, str]]:
        """(profile id or "", served name) for each name the upstream serves: the model info metric."""
        models = self.registry.state.models
        profile = self.current if self.backend else self._unmanaged_profile(models)
        return [(profile or "", name) for name in models]

    def _unmanaged_profile(self, served: tuple[str, ...]) -> str | None:
        """Without a backend: the profile whose served name the upstream serves, if one does."""
        found = self.profiles.by_served_name(served[0]) if served else None
        return found.id if found else None

    def known_hardware(self) -> Hardware:
        """The last hardware reading (``start`` takes the first)."""
        assert self._hardware is not None, "start() reads the hardware"
        return self._hardware

    def primary_claim(self) -> Placement | None:
        """What the switched model holds of the GPUs: its plan's memory on the first GPUs."""
        profile = self.profiles.profiles.get(self.current or "")
        if profile is None or self._hardware is None:
            return None
        fit = planner.plan(profile, self._hardware, self.cfg.reserve_gib)
        tp = fit.tensor_parallel or 1
        return Placement(profile.id, tuple(range(tp)), fit.need_per_gpu, tp)

    def plans(self, hardware: Hardware) -> list[Plan]:
        return planner.recommend(self.profiles.profiles.values(), hardware, self.cfg.reserve_gib)

    # ---- events --------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue of events: ``{"state", "current_profile", "job": job.public()}`` per change."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    def _publish(self, job: Job) -> None:
        self.publish({"state": self.state.value, "current_profile": self.current, "job": job.public()})

    def publish(self, event: dict[str, Any]) -> None:
        """Send ``event`` to every subscriber (a job's change, or an on-demand instance's)."""
        for queue in self._subscribers:
            if queue.full():  # a slow reader loses the oldest progress, never the newest
                queue.get_nowait()
            queue.put_nowait(event)

    def _enter(self, job: Job, state: State, phase: str, fraction: float | None = None) -> None:
        job.state = self.state = state
        job.phase = phase
        if fraction is not None:
            job.progress = fraction
        job.history.append((state.value, time.time()))
        _log.info("switch", job=job.id, profile=job.profile_id, state=state.value, phase=phase)
        self._publish(job)

    def _finish(self, job: Job, outcome: str, error: str | None = None) -> None:
        job.outcome, job.error, job.finished_at = outcome, error, time.time()
        if job.id == self._intent_job:
            intent.clear(self._state_dir)
            self._intent_job = None
        if outcome in ("switched", "already_serving"):
            job.progress = 1.0
        if not job.dry_run:
            self.metrics.count_switch(outcome, job.finished_at - job.created_at)
        self._publish(job)

    # ---- commands ------------------------------------------------------------------------------

    def switch(self, profile_id: str, *, dry_run: bool = False, force: bool = False) -> tuple[Job, bool]:
        """Start a switch job (or join the running one for the same profile); returns the job
        and whether it was joined. Dry runs are planned at once and change nothing."""
        if self.backend is None:
            raise Conflict(
                "Model switching is not enabled on this gateway: it proxies a vLLM it does not run. "
                "Set switch.backend to 'docker' or 'process' (GWPROXY_SWITCH_BACKEND) to let it start "
                "and swap models.",
                code="switching_disabled",
            )
        if profile_id not in self.profiles.profiles:
            raise NotFound(f"no profile '{profile_id}' (GET /api/models/profiles lists them)", param="profile_id")
        running = self.job if self.job is not None and not self.job.done else None
        if running is not None and not dry_run:
            if running.profile_id == profile_id:
                return running, True
            raise Conflict(
                f"a switch to '{running.profile_id}' is in progress (job {running.id}); wait for it to finish",
                code="switch_in_progress",
            )
        job = Job(secrets.token_hex(6), profile_id, self.current, dry_run=dry_run, force=force)
        if dry_run:
            assert self._hardware is not None, "start() reads the hardware"
            job.plan = planner.plan(self.profiles.profiles[profile_id], self._hardware, self.cfg.reserve_gib)
            job.state, job.phase = State.VALIDATING, "planned"
            self._finish(job, "dry_run", None if job.plan.fits else job.plan.reason)
            return job, False
        self.job = job
        self._remember(job, attempts=1)
        self._task = asyncio.create_task(self._run(job), name=f"gwproxy-switch-{job.id}")
        return job, False

    def _remember(self, job: Job, attempts: int) -> None:
        intent.save(self._state_dir, intent.Intent(job.id, job.profile_id, job.previous, job.force, attempts))
        self._intent_job = job.id

    def reload(self) -> ProfileSet:
        self.profiles = self._load_profiles()
        if self.fleet is not None:
            self.registry.aliases = self.fleet.aliases()
        for problem in self.profiles.problems:
            _log.warning("profile not loaded", file=problem.file, field=problem.field, reason=problem.reason)
        _log.info("profiles loaded", count=len(self.profiles.profiles), problems=len(self.profiles.problems))
        return self.profiles

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover what the backend left running, else start the default profile if asked to."""
        await self.hardware()  # read once now, in a thread: a dry run plans with this reading
        if self.backend is None:
            return
        try:
            found = await self.backend.find()
        except Exception as exc:  # the engine is down or refuses us: report it, keep serving the API
            self.state = State.FAILED
            self.error = f"the {self.backend.name} backend is not usable: {type(exc).__name__}: {exc}"
            _log.error("switcher backend unusable", backend=self.backend.name, error=self.error)
            return
        pending = intent.load(self._state_dir)
        if found is not None or pending is not None:
            self._task = asyncio.create_task(self._restart(found, pending), name="gwproxy-switch-recover")
        elif self.cfg.start_on_boot and self.profiles.default is not None:
            chosen = self._boot_profile(self.profiles.default, await self.hardware(max_age=0))
            if chosen is not None:
                self.switch(chosen)

    def _boot_profile(self, default: Profile, hardware: Hardware) -> str | None:
        """The profile to start on boot: the default when it fits; else (``boot_fallback``) the
        profile that fits best, both logged with what the default needs against what is here."""
        fit = planner.plan(default, hardware, self.cfg.reserve_gib)
        if fit.fits:
            return default.id
        _log.error("default profile does not fit the GPUs", profile=default.id, reason=fit.reason)
        best = next(
            (p for p in planner.recommend(self.profiles.profiles.values(), hardware, self.cfg.reserve_gib) if p.fits),
            None,
        )
        if not self.cfg.boot_fallback or best is None:
            why = "switch.boot_fallback is off" if best is not None else "no profile fits either"
            self.error = f"the default profile '{default.id}' was not started: {fit.reason}; {why}"
            self.boot = {"default": default.id, "started": None, "reason": fit.reason}
            _log.error("no model started on boot", profile=default.id, reason=why)
            return None
        self.boot = {"default": default.id, "started": best.profile_id, "reason": fit.reason}
        _log.warning(
            "starting the best-fitting profile instead of the default",
            default=default.id, profile=best.profile_id, plan=best.reason,
        )  # fmt: skip
        return best.profile_id

    async def _restart(self, found: Instance | None, pending: intent.Intent | None) -> None:
        """Recover the instance the backend left running, then resume the switch a previous gateway
        was making (its job id kept), or report it failed when it was interrupted too often."""
        if found is not None:
            same = pending is not None and pending.profile_id == found.profile_id
            job = Job(pending.job if same and pending else secrets.token_hex(6), found.profile_id, found.previous,
                      phase="recovering", resumed=same)  # fmt: skip
            self.job, self.instance, self.current = job, found, found.profile_id
            if same:
                self._intent_job = job.id  # the switch was past its start: recovering finishes it
                pending = None
            _log.info("found a running model instance", profile=found.profile_id, handle=found.handle[:12])
            await self._recover(job, found)
        if pending is None:
            return
        job = Job(pending.job, pending.profile_id, self.current, force=pending.force, resumed=True)
        self.job = job
        self._intent_job = job.id
        if pending.attempts >= intent.MAX_ATTEMPTS or pending.profile_id not in self.profiles.profiles:
            why = (
                f"interrupted by {pending.attempts} gateway restarts; not resumed again (switch again to retry)"
                if pending.profile_id in self.profiles.profiles
                else f"profile '{pending.profile_id}' no longer exists"
            )
            _log.error("interrupted switch not resumed", job=job.id, profile=job.profile_id, reason=why)
            job.state = State.FAILED
            self.error = f"the switch to '{pending.profile_id}' (job {job.id}) was {why}"
            self._finish(job, "failed", self.error)
            fallback = self.profiles.profiles.get(pending.previous or "") or self.profiles.default
            if self.instance is None and self.cfg.start_on_boot and fallback is not None:
                self.switch(fallback.id)  # serve what was served before (or the default), as a boot would
            return
        _log.warning("resuming a switch interrupted by a gateway restart", job=job.id, profile=job.profile_id)
        self._remember(job, attempts=pending.attempts + 1)
        await self._run(job)

    async def close(self) -> None:
        if self.fleet is not None:
            await self.fleet.close(stop=self.cfg.stop_on_exit)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.backend is not None:
            if self.cfg.stop_on_exit and self.instance is not None:
                await self.backend.stop(self.instance, self.cfg.stop_timeout)
            await self.backend.close()

    # ---- the job -------------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        assert self.backend is not None
        profile = self.profiles.profiles[job.profile_id]
        self._enter(job, State.VALIDATING, "planning")
        job.plan = planner.plan(profile, await self.hardware(max_age=0), self.cfg.reserve_gib)
        if not job.plan.fits and not job.force:
            self.state = State.READY if self.instance is not None else State.STOPPED
            job.state = State.FAILED
            self._finish(job, "refused", f"{job.plan.reason} (force: true starts it anyway)")
            return
        if self.state is State.READY and self.current == profile.id and not job.force:
            job.state = State.READY
            self._finish(job, "already_serving")
            return
        tp = job.plan.tensor_parallel or profile.tensor_parallel or 1
        self.gate.hold(f"switching to '{profile.id}'", _names(profile))
        try:
            await self._stop_current(job)
            loading = time.monotonic()
            await self._bring_up(job, profile, tp, job.previous)
        except SwitchFailed as exc:
            await self._roll_back(job, str(exc))
            return
        self.metrics.observe_load(profile.id, time.monotonic() - loading)
        self._enter(job, State.READY, "ready", 1.0)
        self._finish(job, "switched")

    async def _stop_current(self, job: Job) -> None:
        assert self.backend is not None
        if self.instance is None:
            return
        self._enter(job, State.STOPPING, f"draining {self.gate.inflight} request(s) in flight")
        if not await self.gate.drained(self.cfg.drain_seconds):
            _log.warning("drain timeout: stopping with requests in flight", in_flight=self.gate.inflight)
        self._enter(job, State.STOPPING, f"stopping '{self.instance.profile_id}'")
        await self.backend.stop(self.instance, self.cfg.stop_timeout)
        self.instance, self.current = None, None

    async def _bring_up(self, job: Job, profile: Profile, tp: int, previous: str | None) -> None:
        assert self.backend is not None
        self._enter(job, State.STARTING, f"starting '{profile.id}' (tensor parallel {tp})", 0.05)
        utilization = None
        if self.fleet is not None:  # sharing the GPUs: claim the planned share, not the profile's
            fit = planner.plan(profile, await self.hardware(), self.cfg.reserve_gib)
            claim = Placement(profile.id, tuple(range(tp)), fit.need_per_gpu, tp)
            await self.fleet.make_room(profile, claim)
            utilization = claim.utilization(await self.hardware())
        launch = Launch(profile, previous, tp, self.cfg.vllm_host, self._port(), utilization)
        try:
            self.instance = await self.backend.start(launch)
        except Exception as exc:  # the engine refused: image missing, bad command …
            raise SwitchFailed(f"could not start '{profile.id}': {type(exc).__name__}: {exc}") from exc
        self.current = profile.id
        await self._await_ready(job, self.instance, profile)

    async def _await_ready(self, job: Job, instance: Instance, profile: Profile | None) -> None:
        assert self.backend is not None
        self._enter(job, State.LOADING, "loading", max(job.progress, 0.1))
        self._log_tail.clear()
        follower = asyncio.create_task(self._follow(job, instance))
        timeout = profile.startup_timeout if profile else self.cfg.hold_seconds * 10
        deadline = time.monotonic() + timeout
        try:
            while True:
                if await self._ready(profile):
                    break
                now = await self.backend.state(instance)
                if not now.running:
                    await asyncio.wait([follower], timeout=1)  # let the last lines arrive
                    tail = " | ".join(list(self._log_tail)[-5:])
                    raise SwitchFailed(f"'{instance.profile_id}' exited with code {now.exit_code}: {tail}")
                if time.monotonic() > deadline:
                    raise SwitchFailed(f"'{instance.profile_id}' was not ready within {timeout:g}s")
                await asyncio.sleep(self.cfg.ready_poll)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await self.registry.refresh()
        self.gate.open(_names(profile) if profile is not None else None)

    async def _follow(self, job: Job, instance: Instance) -> None:
        assert self.backend is not None

        def step(phase: str, fraction: float) -> None:
            if fraction > job.progress:
                job.phase, job.progress = phase, fraction
                self._publish(job)

        await follow(self.backend, instance, step, lambda line: self._log_tail.append(line[:300]))

    async def _ready(self, profile: Profile | None) -> bool:
        return await self.registry.ready(profile.served_name if profile is not None else None)

    async def _roll_back(self, job: Job, reason: str) -> None:
        assert self.backend is not None
        _log.warning("switch failed", job=job.id, profile=job.profile_id, error=reason)
        job.error = reason
        self._enter(job, State.FAILED, reason)
        if self.instance is not None:
            with contextlib.suppress(Exception):
                await self.backend.stop(self.instance, self.cfg.stop_timeout)
            self.instance, self.current = None, None
        previous = self.profiles.profiles.get(job.previous) if job.previous else None
        if previous is None:
            self.gate.down(f"starting '{job.profile_id}' failed and there is no previous model to return to")
            self._finish(job, "failed", reason)
            return
        self._enter(job, State.ROLLING_BACK, f"returning to '{previous.id}'", 0.0)
        tp = planner.plan(previous, await self.hardware(), self.cfg.reserve_gib).tensor_parallel or 1
        try:
            await self._bring_up(job, previous, tp, None)
        except SwitchFailed as exc:
            _log.error("rollback failed", job=job.id, profile=previous.id, error=str(exc))
            self._enter(job, State.FAILED, f"rollback failed: {exc}")
            self.gate.down(f"switch and rollback both failed ({exc})")
            self._finish(job, "failed", f"{reason}; rollback to '{previous.id}' failed: {exc}")
            return
        self._enter(job, State.READY, f"ready on '{previous.id}' (rolled back)", 1.0)
        self._finish(job, "rolled_back", reason)

    async def _recover(self, job: Job, found: Instance) -> None:
        profile = self.profiles.profiles.get(found.profile_id)
        self.gate.hold(f"'{found.profile_id}' is coming up", _names(profile) if profile is not None else frozenset())
        try:
            await self._await_ready(job, found, profile)
        except SwitchFailed as exc:
            await self._roll_back(job, str(exc))
            return
        self._enter(job, State.READY, "ready (recovered)", 1.0)
        self._finish(job, "switched")

    def _port(self) -> int:
        from urllib.parse import urlsplit

        parts = urlsplit(self.registry.origin)
        return parts.port or (443 if parts.scheme == "https" else 80)


def _names(profile: Profile) -> frozenset[str]:
    """What requests name a profile by: its served names (the gate holds those)."""
    return frozenset(profile.served_names)
