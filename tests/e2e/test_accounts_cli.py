"""Accounts from the command line and at start-up, against real gateway processes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.conftest import ADMIN_PASSWORD, JWT_SECRET, Gateway, gwproxy_cli
from tests.conftest import gwproxy_run as run
from tests.support.procs import Proc, free_port, start_gateway


def test_user_and_key_commands(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", "JWT_SECRET": JWT_SECRET}
    out = run(env, "user", "list")
    assert out.returncode == 2 and "gwproxy migrate" in out.stderr
    gwproxy_cli(env, "migrate")
    gwproxy_cli(env, "user", "add", "ann", "--password-stdin", stdin="ann-password\n")
    assert run(env, "user", "add", "ann", "--password-stdin", stdin="ann-password\n").returncode == 1
    assert run(env, "user", "add", "tim", "--password-stdin", stdin="short\n").returncode != 0
    gwproxy_cli(env, "user", "set-role", "ann", "admin")
    gwproxy_cli(env, "user", "set-password", "ann", "--password-stdin", stdin="new-password\n")
    key = gwproxy_cli(env, "key", "create", "--user", "ann", "--name", "ci", "--expires", "30")
    assert key.count("\n") == 1 and key.strip().startswith("gwp-") and len(key.strip()) == 47  # the key alone
    listing = gwproxy_cli(env, "user", "list").splitlines()
    assert listing[0].split() == ["ID", "USERNAME", "ROLE", "STATE", "CAPTURE", "MODELS", "CREATED"]
    assert listing[1].split()[1:4] == ["ann", "admin", "active"]
    gwproxy_cli(env, "user", "disable", "ann")
    [ann] = json.loads(gwproxy_cli(env, "user", "list", "--json"))
    assert (ann["username"], ann["role"], ann["state"], ann["active"]) == ("ann", "admin", "disabled", False)
    assert run(env, "key", "create", "--user", "nobody").returncode == 1
    gwproxy_cli(env, "migrate", "base", "--down")
    assert run(env, "user", "list").returncode == 2


def test_keys_listed_and_revoked_users_enabled_and_deleted(tmp_path: Path) -> None:
    """One line per result (no log line beside it), listings with headers or --json."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", "JWT_SECRET": JWT_SECRET}
    gwproxy_cli(env, "migrate")
    for name, role in (("root", "admin"), ("bo", "user")):
        out = run(env, "user", "add", name, "--role", role, "--password-stdin", stdin=f"{name}-password-1\n")
        assert out.returncode == 0 and out.stderr.count("\n") == 1, out.stderr  # the result, nothing else
    key = gwproxy_cli(env, "key", "create", "--user", "bo", "--name", "laptop").strip()
    gwproxy_cli(env, "key", "create", "--user", "root")
    table = gwproxy_cli(env, "key", "list").splitlines()
    assert table[0].split() == ["ID", "USER", "NAME", "PREFIX", "STATE", "MODELS", "CREATED", "EXPIRES", "LAST", "USED"]
    assert key not in "\n".join(table) and len(table) == 3
    [mine] = json.loads(gwproxy_cli(env, "key", "list", "--user", "bo", "--json"))
    assert (mine["name"], mine["state"], mine["username"]) == ("laptop", "active", "bo") and key.startswith(
        mine["prefix"][:-1]
    )
    revoked = run(env, "key", "revoke", mine["prefix"])  # as `key list` shows it; an id works too
    assert revoked.returncode == 0 and revoked.stderr.count("\n") == 1
    assert json.loads(gwproxy_cli(env, "key", "list", "--user", "bo", "--json"))[0]["state"] == "revoked"
    assert run(env, "key", "revoke", str(mine["id"])).returncode == 0  # again: already revoked is fine
    assert run(env, "key", "revoke", "999").returncode == 1 and run(env, "key", "revoke", "gwp-nope").returncode == 1

    gwproxy_cli(env, "user", "disable", "bo")
    gwproxy_cli(env, "user", "enable", "bo")
    assert {u["username"]: u["state"] for u in json.loads(gwproxy_cli(env, "user", "list", "--json"))}["bo"] == "active"
    last_admin = run(env, "user", "delete", "root", "--yes")
    assert last_admin.returncode == 1 and "last active admin" in last_admin.stderr
    assert run(env, "user", "delete", "bo").returncode == 0  # no terminal: no question
    assert [u["username"] for u in json.loads(gwproxy_cli(env, "user", "list", "--json"))] == ["root"]
    assert [k["username"] for k in json.loads(gwproxy_cli(env, "key", "list", "--json"))] == ["root"]  # bo's went


def test_serve_refuses_an_unmigrated_database(tmp_path: Path, log_dir: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/empty.db", "JWT_SECRET": JWT_SECRET}
    out = run(env, "serve", "--port", str(free_port()))
    assert out.returncode == 2
    assert "gwproxy migrate" in out.stderr and "revision" in out.stderr


def test_serve_requires_a_strong_jwt_secret(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/db.db", "JWT_SECRET": "too-short"}
    gwproxy_cli(env, "migrate")
    out = run(env, "serve", "--port", str(free_port()))
    assert out.returncode == 2 and "auth.jwt_secret" in out.stderr


def test_first_admin_from_environment(tmp_path: Path, log_dir: Path, sim: int) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path}/first.db",
        "JWT_SECRET": JWT_SECRET,
        "GWPROXY_ADMIN_PASSWORD": "first-admin-pw",
    }
    gwproxy_cli(env, "migrate")
    proc, port = start_gateway(log_dir, sim, env=env, name="gateway-first-admin")
    try:
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/auth/login", json={"username": "admin", "password": "first-admin-pw"}
        )
        assert r.status_code == 200
        me = httpx.get(
            f"http://127.0.0.1:{port}/api/auth/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"}
        )
        assert me.json()["role"] == "admin"
        assert "first-admin-pw" not in proc.output()
    finally:
        proc.stop()


def test_no_secret_reaches_the_logs(gateway: Gateway) -> None:
    """Log in, refresh, create and use keys, fail logins: then search every log line."""
    base = gateway.url
    secrets_seen = [ADMIN_PASSWORD, gateway.key, "wrong-password-xyz"]
    r = httpx.post(base + "/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    tokens = r.json()
    secrets_seen += [tokens["access_token"], tokens["refresh_token"]]
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    rotated = httpx.post(base + "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).json()
    secrets_seen += [rotated["access_token"], rotated["refresh_token"]]
    made = httpx.post(base + "/api/auth/keys", headers=auth, json={"name": "log-test"}).json()
    secrets_seen.append(made["key"])
    httpx.get(base + "/v1/models", headers={"x-api-key": made["key"]})
    httpx.get(base + "/v1/models", headers={"Authorization": "Bearer gwp-" + "z" * 43})
    httpx.post(base + "/api/auth/login", json={"username": "admin", "password": "wrong-password-xyz"})
    httpx.post(base + "/api/admin/users", headers=auth, json={"username": "logged", "password": "user-password-9"})
    secrets_seen.append("user-password-9")
    output = gateway.proc.output()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "login" for line in lines)
    for secret in secrets_seen:
        assert secret not in output
        assert secret[:20] not in output  # not even a recognisable part


def test_cli_commands_log_to_stderr_only(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "JWT_SECRET": JWT_SECRET}
    gwproxy_cli(env, "migrate")
    out = run(env, "user", "add", "zed", "--password-stdin", stdin="zed-password\n")
    assert out.returncode == 0 and out.stdout == "" and "zed" in out.stderr
    assert "zed-password" not in out.stderr


def test_demo_proc_has_a_working_admin_key(log_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = Proc(
        "demo-key",
        ["demo", "--host", "127.0.0.1", "--port", str(port)],
        log_dir,
        env={"GWPROXY_DATABASE_SQLITE_PATH": str(tmp_path / "d.db")},
    )
    try:
        key = proc.wait_output("Press Ctrl-C to stop.").split("API key: ")[1].split()[0]
        me = httpx.get(f"http://127.0.0.1:{port}/api/auth/me", headers={"Authorization": f"Bearer {key}"})
        assert me.status_code == 200 and me.json()["username"] == "demo" and me.json()["role"] == "admin"
    finally:
        proc.stop()


def test_allowed_models_from_the_command_line(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/cli.db", "JWT_SECRET": JWT_SECRET}
    gwproxy_cli(env, "migrate")
    gwproxy_cli(env, "user", "add", "dee", "--models", "a, b", "--password-stdin", stdin="dee-password\n")
    gwproxy_cli(env, "key", "create", "--user", "dee", "--models", "a")
    [dee] = json.loads(gwproxy_cli(env, "user", "list", "--json"))
    assert dee["allowed_models"] == ["a", "b"] and dee["models"] == "a,b"
    [key] = json.loads(gwproxy_cli(env, "key", "list", "--json"))
    assert key["allowed_models"] == ["a"]
    gwproxy_cli(env, "user", "set-models", "dee", "--any")
    [dee] = json.loads(gwproxy_cli(env, "user", "list", "--json"))
    assert dee["allowed_models"] is None and dee["models"] == "any"
    assert run(env, "user", "set-models", "dee").returncode == 2  # --models or --any
