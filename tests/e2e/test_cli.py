"""The command line as operators use it: demo, serve flags, configuration errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.procs import Proc, free_port


def test_demo_serves_the_printed_examples(log_dir: Path, tmp_path: Path) -> None:
    """What `make run` prints is run exactly as printed: the curl command and the SDK script."""
    port = free_port()
    env = {"GWPROXY_DATABASE_SQLITE_PATH": str(tmp_path / "demo.db")}
    proc = Proc("demo", ["demo", "--host", "127.0.0.1", "--port", str(port)], log_dir, env=env)
    try:
        banner = proc.wait_output("Press Ctrl-C to stop.")
        curl = banner[banner.index("\ncurl ") : banner.index("\n\n", banner.index("\ncurl "))]
        script = banner[banner.index("\npython - <<'PY'") : banner.index("\nPY\n") + 4]
        shell_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, check=True, env=shell_env)
        assert '"object":"chat.completion"' in out.stdout
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=shell_env)
        assert len(out.stdout.split()) >= 3, out.stdout  # the streamed words, printed as they came
    finally:
        proc.stop()
    assert proc.popen.returncode == 0


def _listening(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on ``port`` at (from the kernel's table)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def _banner_key(banner: str) -> str:
    return banner.split("API key: ", 1)[1].split()[0]


def test_demo_listens_locally_reuses_its_key_and_says_when_its_port_is_taken(log_dir: Path, tmp_path: Path) -> None:
    """A second `make run` prints the key the first one did (saved 0600 beside the database); the
    demo listens on 127.0.0.1 unless told otherwise; a port another server holds is one line with
    the PORT= hint and exit 1 — no traceback, nothing started."""
    import socket

    port = free_port()
    env = {"GWPROXY_DATABASE_SQLITE_PATH": str(tmp_path / "demo.db")}
    keys = []
    for run in range(2):
        proc = Proc(f"demo-reuse-{run}", ["demo", "--port", str(port)], log_dir, env=env)
        try:
            banner = proc.wait_output("Press Ctrl-C to stop.")
            keys.append(_banner_key(banner))
            # The simulator is not up when the gateway starts: said plainly, not as a fault.
            assert "upstream not up yet: the model manager starts the model" in banner
            assert "upstream unreachable" not in banner
            if run == 0:
                assert _listening(port) == {"127.0.0.1"}
        finally:
            proc.stop()
    assert keys[0] == keys[1]
    saved = tmp_path / ".gwproxy" / "demo.json"
    assert saved.stat().st_mode & 0o777 == 0o600 and keys[0] in saved.read_text()

    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: past TIME_WAIT
        holder.bind(("127.0.0.1", port))
        holder.listen()
        for args in (["demo", "--port", str(port)], ["serve", "--host", "127.0.0.1", "--port", str(port)]):
            out = subprocess.run(
                [sys.executable, "-m", "gwproxy", *args],
                capture_output=True, text=True, cwd=tmp_path, timeout=60,
                env={**os.environ, **env, "GWPROXY_UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1", "JWT_SECRET": "s" * 40},
            )  # fmt: skip
            assert out.returncode == 1, out.stderr
            lines = [line for line in out.stderr.splitlines() if line.startswith("gwproxy:")]
            assert len(lines) == 1 and f"port {port} on 127.0.0.1 is already in use" in lines[0], out.stderr
            assert "Traceback" not in out.stderr and f"--port {port + 1}" in lines[0]
            if args[0] == "demo":
                assert f"PORT={port + 1}" in lines[0] and "simulator serving" not in out.stdout + out.stderr


def test_bad_configuration_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GWPROXY_UPSTREAM_IDLE_TIMEOUT": "soon"}
    out = subprocess.run(
        [sys.executable, "-m", "gwproxy", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
    )
    assert out.returncode == 2
    assert "upstream.idle_timeout" in out.stderr and "GWPROXY_UPSTREAM_IDLE_TIMEOUT" in out.stderr


def test_help_lists_the_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "gwproxy", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("serve", "sim", "demo"):
        assert cmd in out.stdout
    out = subprocess.run([sys.executable, "-m", "gwproxy", "sim", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--model", "--max-model-len", "--ttft-ms", "--itl-ms", "--seed", "--startup-delay"):
        assert flag in out.stdout


def test_sim_keeps_its_port_closed_during_startup_delay(log_dir: Path) -> None:
    import socket
    import time

    port = free_port()
    proc = Proc("sim-delay", ["sim", "--port", str(port), "--startup-delay", "1.0"], log_dir)
    try:
        time.sleep(0.4)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # refused, as vLLM while loading
        proc.wait_http(f"http://127.0.0.1:{port}/health", timeout=10)
    finally:
        proc.stop()


def _gwproxy(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gwproxy", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})}, cwd=cwd,
    )  # fmt: skip


def test_gwproxy_alone_prints_help_and_every_option_says_what_it_does() -> None:
    import argparse

    from gwproxy.cli import build_parser

    out = _gwproxy()
    assert out.returncode == 0 and out.stdout.startswith("usage: gwproxy") and "completion" in out.stdout
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                missing.extend(f"{path} {name}" for name in action.choices if name not in helped)
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif not action.help and action.dest != "help":
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "gwproxy")
    assert missing == []


def test_completion_scripts_offer_the_commands_actions_and_flags(tmp_path: Path) -> None:
    script = tmp_path / "gwproxy.bash"
    script.write_text(_gwproxy("completion", "bash").stdout)
    probe = (
        f"source {script}; "
        'COMP_WORDS=(gwproxy us); COMP_CWORD=1; _gwproxy; echo "${COMPREPLY[*]}"; '
        "COMP_WORDS=(gwproxy key ''); COMP_CWORD=2; _gwproxy; echo \"${COMPREPLY[*]}\"; "
        'COMP_WORDS=(gwproxy user add ann --p); COMP_CWORD=4; _gwproxy; echo "${COMPREPLY[*]}"'
    )
    lines = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0] == "user" and set(lines[1].split()) >= {"create", "list", "revoke"}
    assert lines[2] == "--password-stdin"
    assert "bashcompinit" in _gwproxy("completion", "zsh").stdout


def test_config_show_names_each_source_and_hides_secrets(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[server]\nport = 9999\n[upstream]\napi_key = "sk-file-secret"\n')
    env = {
        "JWT_SECRET": "jwt-secret-value-" + "x" * 30,
        "DATABASE_URL": "postgresql://gw:db-password@db.example:5432/gw",
        "GWPROXY_SERVER_LOG_LEVEL": "debug",
    }
    out = _gwproxy("config", "show", "--json", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["key"]: r for r in json.loads(out.stdout)}
    assert (rows["server.port"]["value"], rows["server.port"]["source"]) == (9999, "config file config.toml")
    assert rows["server.log_level"]["source"] == "environment GWPROXY_SERVER_LOG_LEVEL"
    assert rows["auth.jwt_secret"] == {
        "key": "auth.jwt_secret",
        "value": "(set, hidden)",
        "source": "environment JWT_SECRET",
    }
    assert rows["database.url"]["value"] == "postgresql://***@db.example:5432/gw"
    assert rows["server.host"]["source"] == "default"
    text = (
        _gwproxy("config", "show", env=env, cwd=tmp_path).stdout
        + _gwproxy("config", "show", "auth", env=env, cwd=tmp_path).stdout
    )
    for secret in ("sk-file-secret", "jwt-secret-value", "db-password"):
        assert secret not in out.stdout + text
    assert text.splitlines()[0].split() == ["KEY", "VALUE", "SOURCE"]
    assert _gwproxy("config", "show", "nope", cwd=tmp_path).returncode == 2


def test_colour_only_for_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from gwproxy.log import use_color

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(Terminal()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Terminal())


def test_models_commands_drive_a_running_gateway(log_dir: Path, tmp_path: Path) -> None:
    """`gwproxy models status | switch | events` against the demo, with the key from the
    environment: a switch followed to its end, the events it printed, errors said in one line."""
    port = free_port()
    proc = Proc("demo-models-cli", ["demo", "--port", str(port)], log_dir,
                env={"GWPROXY_DATABASE_SQLITE_PATH": str(tmp_path / "demo.db")})  # fmt: skip
    try:
        key = _banner_key(proc.wait_output("Press Ctrl-C to stop."))
        env = {"GWPROXY_URL": f"http://127.0.0.1:{port}", "GWPROXY_API_KEY": key, "NO_COLOR": "1"}
        status = _gwproxy("models", "status", env=env)
        assert status.returncode == 0, status.stderr
        fields = dict(line.split(None, 1) for line in status.stdout.splitlines()[1:])
        assert fields["state"] == "ready" and fields["profile"] == "demo-model"
        switched = _gwproxy("models", "switch", "demo-model-large", env=env)
        assert switched.returncode == 0, switched.stdout + switched.stderr
        lines = switched.stdout.splitlines()
        assert any(" loading " in line for line in lines) and lines[-1].endswith("→ switched")
        assert (
            json.loads(_gwproxy("models", "status", "--json", env=env).stdout)["current_profile"] == "demo-model-large"
        )
        dry = _gwproxy("models", "switch", "demo-model", "--dry-run", env=env)
        assert dry.returncode == 0 and "fits" in dry.stdout
        events = subprocess.Popen(
            [sys.executable, "-m", "gwproxy", "models", "events"], stdout=subprocess.PIPE, text=True,
            env={**os.environ, **env},
        )  # fmt: skip
        time.sleep(1.5)  # listening: the next switch is the one it follows
        assert _gwproxy("models", "switch", "demo-model", "--no-wait", env=env).returncode == 0
        printed, _ = events.communicate(timeout=60)  # it ends with the job
        assert printed.splitlines()[0].startswith("state ready, profile demo-model-large")
        assert printed.splitlines()[-1].endswith("→ switched")
        missing = _gwproxy("models", "switch", "nope", env=env)
        assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "404" in missing.stderr
        refused = _gwproxy("models", "status", env={**env, "GWPROXY_API_KEY": "gwp-wrong"})
        assert refused.returncode == 1 and "GWPROXY_API_KEY" in refused.stderr
    finally:
        proc.stop()
    gone = _gwproxy("models", "status", "--url", f"http://127.0.0.1:{port}")
    assert gone.returncode == 1 and "no gateway answered" in gone.stderr and "Traceback" not in gone.stderr
