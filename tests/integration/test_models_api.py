"""/api/models/* on a gateway with no switching backend (in front of a vLLM it does not run),
roles, profile reloads (API and SIGHUP), and what the routes report."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from tests.conftest import MODEL, Gateway, gwproxy_cli, provision
from tests.support.procs import start_gateway
from tests.support.switching import TINY, get_json, switch, write_profile


async def test_without_a_backend_status_reports_the_upstream_and_switching_is_refused(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        status = await get_json(s, f"{gateway.url}/api/models/status", gateway.auth)
        assert status["backend"] is None and status["state"] == "unmanaged"
        assert status["served_models"][0] == MODEL and status["upstream"]["reachable"] is True
        assert status["current_profile"] is None  # the simulator's model matches no bundled profile
        assert status["gate"] == {"open": True, "reason": None, "in_flight": 0}
        assert status["hardware"]["source"] in ("none", "nvml", "nvidia-smi")
        code, body = await switch(s, gateway.url, gateway.auth, "phi-3-mini-4k-instruct")
        assert code == 409 and body["error"]["code"] == "switching_disabled"
        assert "GWPROXY_SWITCH_BACKEND" in body["error"]["message"]
        # without a backend a dry run is refused the same way (hardware-recommendations plans any profile)
        code, body = await switch(s, gateway.url, gateway.auth, "phi-3-mini-4k-instruct", dry_run=True)
        assert code == 409


async def test_profiles_and_recommendations_list_every_bundled_profile(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as s:
        profiles = await get_json(s, f"{gateway.url}/api/models/profiles", gateway.auth)
        assert len(profiles["data"]) == 10 and profiles["problems"] == []
        r1 = next(p for p in profiles["data"] if p["id"] == "deepseek-r1-distill-qwen-14b")
        assert (
            r1["default"]
            and r1["architecture"]["kv_heads"] == 8
            and r1["fit"]["verdict"] in ("fits", "tight", "no_fit")
        )
        recs = await get_json(s, f"{gateway.url}/api/models/hardware-recommendations", gateway.auth)
        assert [r["rank"] for r in recs["recommendations"]] == list(range(1, 11))
        assert all(r["reason"] and r["name"] for r in recs["recommendations"])


async def test_bad_switch_bodies_and_roles(gateway: Gateway) -> None:
    user_key = gwproxy_cli(gateway.env, "key", "create", "--user", _plain_user(gateway)).strip()
    as_user = {"Authorization": f"Bearer {user_key}"}
    async with aiohttp.ClientSession() as s:
        assert (await get_json(s, f"{gateway.url}/api/models/status", as_user))["state"] == "unmanaged"
        code, body = await switch(s, gateway.url, as_user, "phi-3-mini-4k-instruct")
        assert code == 403 and body["error"]["type"] == "permission_error"
        async with s.post(f"{gateway.url}/api/models/reload", headers=as_user) as r:
            assert r.status == 403
        bad_bodies = (
            ({}, "profile_id"),
            ({"profile_id": 3}, "profile_id"),
            ({"profile_id": "x", "force": "yes"}, "force"),
            ({"profile_id": "x", "colour": 1}, "colour"),
        )
        for bad, param in bad_bodies:
            async with s.post(f"{gateway.url}/api/models/switch", json=bad, headers=gateway.auth) as r:
                assert r.status == 400, bad
                assert (await r.json())["error"]["param"] == param
        async with s.post(f"{gateway.url}/api/models/switch", data=b"{nope", headers=gateway.auth) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_json"
        async with s.get(f"{gateway.url}/api/models/status") as r:
            assert r.status == 401


def _plain_user(gateway: Gateway) -> str:
    name = f"user{time.monotonic_ns()}"
    gwproxy_cli(gateway.env, "user", "add", name, "--password-stdin", stdin="a-user-password\n")
    return name


async def test_reload_by_api_and_sighup_reports_problems(log_dir: Path, sim: int, tmp_path: Path) -> None:
    env, key = provision(tmp_path)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    write_profile(profiles, "one")
    proc, port = start_gateway(
        log_dir, sim, name="gw-reload", env={**env, "GWPROXY_SWITCH_PROFILES_DIR": str(profiles),
                                             "GWPROXY_SWITCH_HARDWARE": "2 x RTX 3090 24GiB"},
    )  # fmt: skip
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession() as s:
            listed = await get_json(s, f"{base}/api/models/profiles", auth)
            assert [p["id"] for p in listed["data"]] == ["one"] and listed["hardware"] == "2 x RTX 3090 (24 GiB)"
            write_profile(profiles, "two")
            (profiles / "bad.yml").write_text("name: Bad\nmodel: x/y\nserved_names: [bad]\nmax_model_len: 10\n")
            async with s.post(f"{base}/api/models/reload", headers=auth) as r:
                body = await r.json()
            assert r.status == 200 and body["loaded"] == ["one", "two"]
            assert body["problems"] == [
                {"file": "bad.yml", "field": "architecture", "reason": "Missing data for required field."}
            ]

            write_profile(profiles, "three", architecture={**TINY, "parameters_b": 1.0})
            proc.popen.send_signal(signal.SIGHUP)
            for _ in range(50):
                listed = await get_json(s, f"{base}/api/models/profiles", auth)
                if len(listed["data"]) == 3:
                    break
                await asyncio.sleep(0.1)
            assert [p["id"] for p in listed["data"]] == ["one", "three", "two"]
            assert proc.popen.poll() is None  # SIGHUP reloads, it does not stop the gateway
    finally:
        proc.stop()
    assert "bad.yml" in proc.output() and "profile not loaded" in proc.output()
