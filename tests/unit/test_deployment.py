"""What can be checked of the deployment files without a Docker engine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gwproxy.config import known_env_names

ROOT = Path(__file__).resolve().parents[2]


class ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (!reset, !override) are data, not errors."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(tag, _plain)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass
    return data


def test_every_gateway_variable_is_one_config_knows() -> None:
    compose = load("docker-compose.yml")
    known = known_env_names()
    for service in ("gateway", "migrate"):
        env = compose["services"][service]["environment"]
        assert env, service
        unknown = sorted(set(env) - known)
        assert unknown == [], f"{service} sets variables gwproxy does not read: {unknown}"
    dev = load("docker-compose.dev.yml")
    assert set(dev["services"]["gateway"]["environment"]) <= known


def test_stack_shape() -> None:
    services = load("docker-compose.yml")["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["vllm"]["image"].startswith("vllm/vllm-openai")
    assert services["vllm"]["ipc"] == "host"
    assert services["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    gateway = services["gateway"]
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["migrate"]
    assert any("docker.sock" in v for v in gateway["volumes"])
    # Model switching through Docker by default; the fixed vLLM service is the opt-out.
    env = services["gateway"]["environment"]
    assert env["GWPROXY_SWITCH_BACKEND"] == "${GWPROXY_SWITCH_BACKEND-docker}"
    assert env["GWPROXY_SWITCH_HF_CACHE"] == "gwproxy_hf-cache" and "hf-cache" in load("docker-compose.yml")["volumes"]
    assert services["vllm"]["profiles"] == ["static-vllm"]
    assert gateway["depends_on"]["vllm"]["required"] is False
    assert gateway["build"] == "." and gateway["image"] == services["migrate"]["image"]  # compose can build it
    # The spool ("never lost" captures) and the switch state outlive the container.
    dockerfile = (ROOT / "Dockerfile").read_text()
    for volume, variable in (("spool", "GWPROXY_CAPTURE_SPOOL_DIR"), ("state", "GWPROXY_SWITCH_STATE_DIR")):
        mount = next(v for v in gateway["volumes"] if v.startswith(f"{volume}:"))
        assert volume in load("docker-compose.yml")["volumes"]
        assert f"{variable}={mount.split(':')[1]}" in dockerfile


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("#", "")
    }
    assert {".git", ".venv", ".gwproxy", "*.db", "*.spool", ".env", "tests/artifacts"} <= ignored


def test_dockerfile_is_multi_stage_non_root_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    final = text.split("\nFROM ")[-1]
    assert "slim" in final.splitlines()[0]
    assert re.search(r"^USER gwproxy$", final, re.M)
    assert re.search(r'^HEALTHCHECK .* CMD \["gwproxy", "healthcheck"\]$', final, re.M)  # follows the configured port
    assert 'ENTRYPOINT ["gwproxy"]' in final and 'CMD ["serve"]' in final
    assert "gcc" not in final and "build-essential" not in final


def test_image_entrypoint_runs_on_the_host(tmp_path: Path) -> None:
    """The image's ENTRYPOINT + CMD, run directly on this host with the environment compose
    gives it (a database and secret of our own), answers /health."""
    import json as jsonlib
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import JWT_SECRET
    from tests.support.procs import free_port

    text = (ROOT / "Dockerfile").read_text()
    entry = jsonlib.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    cmd = jsonlib.loads(re.search(r"^CMD (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
    assert entry == ["gwproxy"]
    exe = str(Path(sys.executable).parent / entry[0])
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/image.db",
        "JWT_SECRET": JWT_SECRET,
        "GWPROXY_SERVER_PORT": str(port),
        "VLLM_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
    }
    subprocess.run([exe, "migrate"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([exe, *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the image's command did not come up"
                time.sleep(0.1)
        health = jsonlib.loads(re.search(r"^HEALTHCHECK .* CMD (.+)$", text, re.M).group(1))  # type: ignore[union-attr]
        check = subprocess.run([str(Path(sys.executable).parent / health[0]), *health[1:]], env=env,
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0 and f":{port}/health" in check.stdout, check.stderr  # the configured port
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    down = subprocess.run([str(Path(sys.executable).parent / "gwproxy"), "healthcheck"], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert down.returncode == 1 and down.stderr.startswith("gwproxy: http://127.0.0.1:")


def _compose(*files: str, env: dict[str, str], profile: str | None = None) -> subprocess.CompletedProcess[str]:
    """A compose client's own reading of the files (podman-compose's `config`, as `docker compose
    config` would print it): parsing, interpolation and overlay merging, with nothing started."""
    client = Path(sys.executable).with_name("podman-compose")
    args = [str(client), *(["--profile", profile] if profile else [])]
    args += [a for f in files for a in ("-f", str(ROOT / f))] + ["config"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, **env}, cwd=ROOT)


def test_a_compose_client_reads_the_stack_and_the_dev_overlay() -> None:
    secret = {"JWT_SECRET": "x" * 48}
    base = _compose("docker-compose.yml", env=secret)
    assert base.returncode == 0, base.stderr
    stack = yaml.safe_load(base.stdout)
    assert stack["name"] == "gwproxy"
    # By default the gateway runs vLLM itself; the fixed vLLM service is behind a profile.
    assert set(stack["services"]) == {"postgres", "redis", "migrate", "gateway"}
    gateway = stack["services"]["gateway"]
    assert gateway["environment"]["JWT_SECRET"] == "x" * 48
    assert gateway["environment"]["GWPROXY_SWITCH_BACKEND"] == "docker"
    static = yaml.safe_load(_compose("docker-compose.yml", env=secret, profile="static-vllm").stdout)
    assert static["services"]["vllm"]["image"].startswith("vllm/vllm-openai")
    dev = yaml.safe_load(_compose("docker-compose.yml", "docker-compose.dev.yml", env=secret).stdout)
    vllm = dev["services"]["vllm"]
    assert "profiles" not in vllm and "deploy" not in vllm and "ipc" not in vllm  # !reset took them out
    assert vllm["entrypoint"] == ["gwproxy"] and vllm["command"][0] == "sim"
    assert dev["services"]["gateway"]["environment"]["GWPROXY_SWITCH_BACKEND"] == ""
    assert dev["services"]["gateway"]["volumes"] == [
        "./gwproxy:/opt/venv/lib/python3.11/site-packages/gwproxy:ro", "spool:/app/spool", "state:/app/state",
    ]  # fmt: skip
    assert gateway["build"] and {"spool", "state"} <= set(stack["volumes"])
    missing = _compose("docker-compose.yml", env={"JWT_SECRET": ""})
    assert missing.returncode != 0 and "set JWT_SECRET to at least 32 random bytes" in missing.stderr


def test_the_suite_removes_its_temporary_directories() -> None:
    """pytest keeps a failed test's directories only; helpers' scratch directories go at the end."""
    import tomllib

    from tests.conftest import remove_scratch, scratch_dir

    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert ini["tmp_path_retention_policy"] == "failed"
    made = scratch_dir("gwproxy-check-")
    (made / "file").write_text("x")
    remove_scratch(only=[made])  # what the session's last fixture does for all of them
    assert not made.exists()
