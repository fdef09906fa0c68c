"""A new user's first hour: an upstream that is down, or a base URL without /v1, is said plainly —
in the log (at start and while it lasts), in /health, and in the 503 a request for ``current`` gets."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from gwproxy.config import Config, UpstreamConfig
from gwproxy.errors import ModelNotReady
from gwproxy.proxy.registry import UpstreamRegistry, UpstreamState
from tests.conftest import provision
from tests.support.procs import Proc, free_port


def _gateway(log_dir: Path, tmp: Path, upstream: str, name: str) -> tuple[Proc, str, dict[str, str]]:
    env, key = provision(tmp)
    port = free_port()
    proc = Proc(
        name, ["serve", "--host", "127.0.0.1", "--port", str(port), "--upstream", upstream], log_dir,
        env={**env, "GWPROXY_UPSTREAM_POLL_INTERVAL": "0.2", "GWPROXY_UPSTREAM_CONNECT_TIMEOUT": "0.5"},
    )  # fmt: skip
    proc.wait_http(f"http://127.0.0.1:{port}/health")
    return proc, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}


async def test_an_upstream_down_is_logged_at_start_and_while_down(log_dir: Path, tmp_path: Path) -> None:
    proc, base, auth = _gateway(log_dir, tmp_path, f"http://127.0.0.1:{free_port()}/v1", "gw-upstream-down")
    try:
        assert "upstream unreachable" in proc.output()  # at start, before any request
        deadline = time.monotonic() + 10
        while proc.output().count("upstream unreachable") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.output().count("upstream unreachable") >= 2  # again while it stays down (12 polls)
        async with aiohttp.ClientSession(headers=auth) as s:
            async with s.get(f"{base}/health") as r:
                health = await r.json()
                assert r.status == 200 and health["status"] == "degraded"
                assert health["components"]["upstream"]["status"] == "down"
            body = {"model": "current", "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(f"{base}/v1/chat/completions", json=body) as r:
                answer = await r.json()
                assert r.status == 503 and r.headers["Retry-After"]
                assert "unreachable" in answer["error"]["message"] and "loading" not in answer["error"]["message"]
    finally:
        proc.stop()


async def test_a_base_url_without_v1_gets_a_hint(log_dir: Path, tmp_path: Path, sim: int) -> None:
    proc, base, _ = _gateway(log_dir, tmp_path, f"http://127.0.0.1:{sim}", "gw-no-v1")
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{base}/health") as r:
            error = (await r.json())["components"]["upstream"]["error"]
        assert f"did you mean http://127.0.0.1:{sim}/v1?" in error
        assert "did you mean" in proc.output()
    finally:
        proc.stop()


def test_a_503_for_current_says_unreachable_or_loading() -> None:
    cfg = Config(upstream=UpstreamConfig(base_url="http://u:p@10.9.9.9:8000/v1"))
    registry = UpstreamRegistry(cfg.upstream, cfg.upstream_targets())
    registry.primary.state = UpstreamState(False, (), 1.0, "ClientConnectorError: refused")
    with pytest.raises(ModelNotReady, match=r"unreachable \(ClientConnectorError: refused\)"):
        registry.resolve("current")
    registry.primary.state = UpstreamState(True, (), 1.0, None)
    with pytest.raises(ModelNotReady, match="answers but serves no model yet") as err:
        registry.resolve("current")
    assert "u:p@" not in err.value.message
    registry.primary.state = UpstreamState(False, ("m",), 1.0, "a poll timed out")
    assert registry.resolve("current") == "m"  # one failed poll does not unname the model
