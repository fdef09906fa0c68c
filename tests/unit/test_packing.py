"""Packing several models onto the GPUs, with numbers checked by hand, and the choice of what to
evict for a model that needs room (``Fleet._victims``), on the bundled profiles and 2 x 24 GiB.

By hand (bf16: 2 bytes a weight; KV: 2 x layers x KV heads x head dim x 2 bytes a token; 1.5 GiB
reserve; a 24 GiB card offers 24 x 0.9 = 21.6 GiB):
- qwen2-7b-instruct: 7.62 B → 14.19 GiB; KV 57,344 B x 32,768 tokens = 1.75 GiB → 17.44 GiB, tp 1
- deepseek-coder-6.7b-instruct: 6.74 B → 12.55 GiB; KV 524,288 B x 8,192 = 4.00 GiB → 18.05 GiB
- qwen2.5-14b-instruct: 14.77 B / 2 → 13.76 GiB; KV 98,304 B x 32,768 = 3.00 GiB → 18.26 GiB on
  each of 2 GPUs (it does not fit one: 27.5 GiB of weights)
So the 7B and the coder go side by side, one per GPU (two on one would need 35.5 GiB), and the
14B needs both GPUs to itself: it evicts them both.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gwproxy.config import SwitchConfig, UpstreamConfig, UpstreamTarget
from gwproxy.metrics import Metrics
from gwproxy.proxy.upstream import Upstream
from gwproxy.switcher import planner
from gwproxy.switcher.fleet import Fleet
from gwproxy.switcher.hardware import GIB, parse_snapshot
from gwproxy.switcher.hosts import ProcessHost
from gwproxy.switcher.instances import Resident
from gwproxy.switcher.planner import Placement
from gwproxy.switcher.processes import ProcessBackend
from gwproxy.switcher.profiles import Profile, ProfileSet, load_profiles

ROOT = Path(__file__).resolve().parents[2]
PROFILES = load_profiles(ROOT / "profiles")
HW = parse_snapshot("2 x RTX 3090 24GiB")
SEVEN, CODER, FOURTEEN = "qwen2-7b-instruct", "deepseek-coder-6.7b-instruct", "qwen2.5-14b-instruct"


def gib(n: int) -> float:
    return round(n / GIB, 2)


def test_the_needs_are_the_hand_checked_ones() -> None:
    needs = {pid: planner.plan(PROFILES.profiles[pid], HW) for pid in (SEVEN, CODER, FOURTEEN)}
    assert {pid: (p.tensor_parallel, gib(p.need_per_gpu)) for pid, p in needs.items()} == {
        SEVEN: (1, 17.44),
        CODER: (1, 18.05),
        FOURTEEN: (2, 18.26),
    }


def test_a_7b_and_a_coder_side_by_side_and_a_14b_needs_both_gpus() -> None:
    seven, _ = planner.place(PROFILES.profiles[SEVEN], HW, [])
    assert seven is not None and seven.gpus == (0,)
    coder, _ = planner.place(PROFILES.profiles[CODER], HW, [seven])
    assert coder is not None and coder.gpus == (1,)  # not beside the 7B: 17.44 + 18.05 > 21.6
    blocked, fit = planner.place(PROFILES.profiles[FOURTEEN], HW, [seven, coder])
    assert blocked is None and fit.fits  # it fits the machine, not beside them
    why = planner.shortfall(fit, HW, [seven, coder], 0.9)
    assert why == "needs 18.3 GiB on each of 2 GPU(s); GPU 0: 4.2 GiB free, GPU 1: 3.5 GiB free"
    alone, _ = planner.place(PROFILES.profiles[FOURTEEN], HW, [])
    assert alone is not None and alone.gpus == (0, 1)
    assert alone.utilization(HW) == 0.77  # 18.26 of 24 GiB, rounded up: what vLLM is told to claim


def test_best_fit_keeps_the_larger_hole() -> None:
    small = Placement("x", (1,), int(10 * GIB), 1)  # GPU 1 has 11.6 GiB left, GPU 0 21.6
    tiny = PROFILES.profiles["phi-3-mini-4k-instruct"]
    need = planner.plan(tiny, HW).need_per_gpu
    assert gib(need) == 10.12
    placed, _ = planner.place(tiny, HW, [small])
    assert placed is not None and placed.gpus == (1,)  # the fuller GPU that still fits


def _fleet(tmp_path: Path, profiles: ProfileSet, min_residency: float = 0.0) -> Fleet:
    cfg = SwitchConfig(state_dir=str(tmp_path), min_residency=min_residency, reserve_gib=1.5)
    host = ProcessHost(cfg, lambda: HW, {})
    return Fleet(cfg, None, lambda: profiles, [host], lambda: None, Metrics())  # type: ignore[arg-type]


def _resident(tmp_path: Path, profile: Profile, gpus: tuple[int, ...], idle: float, busy: int = 0) -> Resident:
    fit = planner.plan(profile, HW)
    placement = Placement(profile.id, gpus, fit.need_per_gpu, len(gpus))
    upstream = Upstream(UpstreamTarget(profile.id, "http://127.0.0.1:1/v1"), UpstreamConfig())
    upstream.in_flight, upstream.last_used = busy, time.monotonic() - idle
    host = ProcessHost(SwitchConfig(state_dir=str(tmp_path)), lambda: HW, {})
    r = Resident(profile, placement, 1, ProcessBackend([], tmp_path, {}), host, state="ready", upstream=upstream)
    r.loaded_at -= 3600
    return r


def victims(fleet: Fleet, profile: Profile) -> list[str] | None:
    """Who ``Fleet._victims`` would evict to make room for ``profile`` (and how)."""

    def fits(claims: list[Placement]) -> bool:
        return planner.place(profile, HW, claims, 1.5)[0] is not None

    found = fleet._victims(fits)
    return None if found is None else [f"{r.profile.id}:{action}" for r, action in found]


def test_the_14b_evicts_both_idle_models(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, PROFILES)
    fleet.residents = {
        SEVEN: _resident(tmp_path, PROFILES.profiles[SEVEN], (0,), idle=10),
        CODER: _resident(tmp_path, PROFILES.profiles[CODER], (1,), idle=50),
    }
    assert sorted(victims(fleet, PROFILES.profiles[FOURTEEN]) or []) == [f"{CODER}:stop", f"{SEVEN}:stop"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"busy": 1}, None),  # a model with a request in flight is never evicted
        ({"pinned": True}, None),
        ({"swappable": False}, None),
        ({"young": True}, None),  # loaded less than min_residency ago
    ],
)
def test_what_is_never_evicted(tmp_path: Path, change: dict[str, object], expected: object) -> None:
    coder = PROFILES.profiles[CODER]
    flags = {k: v for k, v in change.items() if k in ("pinned", "swappable")}
    if flags:
        from dataclasses import replace

        coder = replace(coder, **flags)  # type: ignore[arg-type]
    profiles = ProfileSet({**PROFILES.profiles, CODER: coder})
    fleet = _fleet(tmp_path, profiles, min_residency=60)
    seven = _resident(tmp_path, PROFILES.profiles[SEVEN], (0,), idle=10)
    other = _resident(tmp_path, coder, (1,), idle=50, busy=int(change.get("busy", 0)))  # type: ignore[call-overload]
    if change.get("young"):
        other.loaded_at = time.monotonic()
    fleet.residents = {SEVEN: seven, CODER: other}
    assert victims(fleet, PROFILES.profiles[FOURTEEN]) is expected


def test_the_cheapest_to_reload_goes_first_and_only_what_is_needed(tmp_path: Path) -> None:
    """Room for phi-3 (10.1 GiB) on either GPU: the coder (12.6 GiB of weights to read again)
    goes rather than the 7B (14.2 GiB), although the 7B has been idle far longer; one is enough."""
    fleet = _fleet(tmp_path, PROFILES)
    fleet.residents = {
        SEVEN: _resident(tmp_path, PROFILES.profiles[SEVEN], (0,), idle=500),
        CODER: _resident(tmp_path, PROFILES.profiles[CODER], (1,), idle=1),
    }
    assert victims(fleet, PROFILES.profiles["phi-3-mini-4k-instruct"]) == [f"{CODER}:stop"]


def test_least_recently_used_breaks_ties(tmp_path: Path) -> None:
    coder = PROFILES.profiles[CODER]
    twin = Profile(**{**{f: getattr(coder, f) for f in coder.__slots__}, "id": "coder-twin"})  # type: ignore[arg-type]
    profiles = ProfileSet({**PROFILES.profiles, "coder-twin": twin})
    fleet = _fleet(tmp_path, profiles)
    fleet.residents = {
        CODER: _resident(tmp_path, coder, (0,), idle=5),
        "coder-twin": _resident(tmp_path, twin, (1,), idle=60),
    }
    assert victims(fleet, PROFILES.profiles["phi-3-mini-4k-instruct"]) == ["coder-twin:stop"]


def test_a_model_that_sleeps_is_put_to_sleep_before_anything_is_stopped(tmp_path: Path) -> None:
    """The 7B sleeps at level 1 (its 14.2 GiB of weights to host RAM; 1.2 GiB stays on GPU 0):
    that frees enough for phi-3 on GPU 0, so nothing is stopped. With too little host RAM for its
    weights, it is stopped like any other."""
    from dataclasses import replace

    seven = replace(PROFILES.profiles[SEVEN], sleep_level=1)
    profiles = ProfileSet({**PROFILES.profiles, SEVEN: seven})
    fleet = _fleet(tmp_path, profiles)
    fleet.residents = {
        SEVEN: _resident(tmp_path, seven, (0,), idle=1),
        CODER: _resident(tmp_path, PROFILES.profiles[CODER], (1,), idle=500),
    }
    assert victims(fleet, PROFILES.profiles["phi-3-mini-4k-instruct"]) == [f"{SEVEN}:sleep"]
    fleet.cfg = SwitchConfig(state_dir=str(tmp_path), min_residency=0, sleep_host_gib=10)
    assert victims(fleet, PROFILES.profiles["phi-3-mini-4k-instruct"]) == [f"{CODER}:stop"]


async def test_gpu_hosts_from_the_configuration() -> None:
    from gwproxy.config import ConfigError, load_config
    from gwproxy.switcher.context import fleet_hosts

    env = {
        "GWPROXY_SWITCH_BACKEND": "docker",
        "GWPROXY_SWITCH_DOCKER_HOSTS": "gpu1=unix:///run/a.sock, gpu2=tcp://10.0.0.7:2375",
        "GWPROXY_SWITCH_DOCKER_HARDWARE": "gpu1=2 x RTX 3090 24GiB; gpu2=1 x H100",
    }
    hosts = fleet_hosts(load_config(None, env), lambda: HW)
    try:
        assert [(h.name, h.address, h.local) for h in hosts] == [
            ("gpu1", "127.0.0.1", True),
            ("gpu2", "10.0.0.7", False),
        ]
        assert hosts[0].hardware().describe() == "2 x RTX 3090 (24 GiB)"
        assert hosts[1].hardware().describe() == "1 x H100 (80 GiB)"
    finally:
        for h in hosts:
            await h.close()
    with pytest.raises(ConfigError, match="no host named gpu3"):
        fleet_hosts(load_config(None, {**env, "GWPROXY_SWITCH_DOCKER_HARDWARE": "gpu3=1 x H100"}), lambda: HW)
    with pytest.raises(ConfigError, match="switch.docker_hosts"):
        load_config(None, {**env, "GWPROXY_SWITCH_DOCKER_HOSTS": "gpu1=ftp://x"})
    with pytest.raises(ConfigError, match="must differ"):
        load_config(None, {**env, "GWPROXY_SWITCH_DOCKER_HOSTS": "a=unix:///x,a=unix:///y"})
