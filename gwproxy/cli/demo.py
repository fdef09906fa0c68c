"""``gwproxy demo`` (``make run``): the gateway on embedded defaults in front of the bundled
simulator, which the switcher's process backend starts and can swap; prints how to call it."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from gwproxy import log as logconf
from gwproxy.cli.common import free_port, load, port_message, port_taken, run_server, serve_app
from gwproxy.config import Config

BANNER = """
gwproxy demo is up: the gateway on http://{host}:{port} in front of the bundled vLLM
simulator (model "{model}", also reachable as "current"), which it runs and can swap.
Demo user "demo" (admin), password {password}, API key: {key}
(kept in {saved} and reused by the next run; the key expires in 30 days)

Try it with curl:

curl http://{host}:{port}/v1/chat/completions \\
  -H 'Authorization: Bearer {key}' \\
  -H 'Content-Type: application/json' \\
  -d '{{"model": "current", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

or with the OpenAI SDK (pip install openai):

python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="http://{host}:{port}/v1", api_key="{key}")
stream = client.chat.completions.create(
    model="current", messages=[{{"role": "user", "content": "Hello!"}}], stream=True
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
PY

Every demo model loads when a request names it (on demand), beside the ones up; the demo GPU
holds two of them, so the third evicts the idle one (least recently used, cheapest to reload):

curl http://{host}:{port}/v1/chat/completions -H 'Authorization: Bearer {key}' \
  -H 'Content-Type: application/json' \
  -d '{{"model": "demo-model-large", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
curl http://{host}:{port}/v1/chat/completions -H 'Authorization: Bearer {key}' \
  -H 'Content-Type: application/json' \
  -d '{{"model": "demo-coder", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
curl http://{host}:{port}/api/models/status -H 'Authorization: Bearer {key}'   # "instances"

Swap the served model (the second demo profile) and watch it happen:

curl -X POST http://{host}:{port}/api/models/switch -H 'Authorization: Bearer {key}' \\
  -H 'Content-Type: application/json' -d '{{"profile_id": "demo-model-large"}}'
curl -N http://{host}:{port}/api/models/events -H 'Authorization: Bearer {key}'

Examples: examples/ (GWPROXY_API_KEY={key} python examples/chat.py)
Console: http://{host}:{port}/ui (sign in as "demo" with the password above)
Health: http://{host}:{port}/health   Metrics: http://{host}:{port}/metrics
API docs: http://{host}:{port}/docs
Press Ctrl-C to stop.
"""


# The demo's "models": the simulator, started, swapped and loaded on demand by the process
# backend. Their sizes make two of them fit the demo GPU (24 GiB x 0.9) together, not three:
# 7.6 + 10.6 GiB fit, 7.6 + 10.6 + 9.6 do not (each: weights + KV cache + 1.5 GiB reserve).
DEMO_PROFILES: dict[str, dict[str, Any]] = {
    "demo-model": {"name": "Demo model", "default": True, "weights_gib": 6.0},
    "demo-model-large": {"name": "Demo model (large)", "weights_gib": 9.0},
    "demo-coder": {"name": "Demo coder", "weights_gib": 8.0, "ttl": 600},
}


def _demo_profiles(directory: Path) -> None:
    import json

    directory.mkdir(parents=True, exist_ok=True)
    arch = {"parameters_b": 0.5, "layers": 4, "attention_heads": 8, "kv_heads": 2, "head_dim": 64, "context": 8192}
    for pid, extra in DEMO_PROFILES.items():
        body = {"model": f"gwproxy-sim/{pid}", "served_names": [pid], "architecture": arch, "max_model_len": 4096}
        (directory / f"{pid}.yml").write_text(json.dumps({**body, **extra}))  # JSON is YAML


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from gwproxy.app import create_app
    from gwproxy.keys import SWITCHER

    sim_port = free_port()
    work = Path(tempfile.mkdtemp(prefix="gwproxy-demo-"))
    _demo_profiles(work / "profiles")
    cfg = load(
        args,
        {
            "server.port": args.port,
            "server.host": args.host or "127.0.0.1",  # a demo is for this machine unless told otherwise
            "upstream.base_url": f"http://127.0.0.1:{sim_port}/v1",
            "upstream.poll_interval": 1.0,
            "switch.backend": "process",
            "switch.profiles_dir": str(work / "profiles"),
            "switch.state_dir": str(work / "state"),
            "switch.hardware": "1 x Demo GPU 24GiB",
            "switch.process_command": f"{sys.executable} -m gwproxy sim --ttft-ms 80 --itl-ms 25 --startup-delay 2",
            "switch.vllm_host": "127.0.0.1",
            "switch.ready_poll": 0.2,
            "switch.stop_on_exit": True,
            "switch.on_demand": True,
            "switch.min_residency": 5.0,
            "capture.spool_dir": str(work / "spool"),
            "server.docs": "true",
        },
    )
    logconf.configure(cfg.server.log_level, json=False)
    if port_taken(cfg.server.host, cfg.server.port):  # say so before starting anything
        shutil.rmtree(work, ignore_errors=True)
        print(port_message(cfg.server.host, cfg.server.port, "gwproxy demo"), file=sys.stderr)
        return 1

    async def main(stop: asyncio.Event) -> None:
        key, password = await _demo_account(cfg, _demo_credentials(cfg))
        app = create_app(cfg, demo=True)
        gateway = await serve_app(app, cfg.server)
        switcher = app[SWITCHER]
        for _ in range(300):  # the default profile's simulator loads for about two seconds
            if switcher.state.value in ("ready", "failed") or stop.is_set():
                break
            await asyncio.sleep(0.1)
        host = "localhost" if cfg.server.host in ("127.0.0.1", "0.0.0.0", "::", "") else cfg.server.host
        banner = BANNER.format(
            host=host, port=cfg.server.port, model=switcher.current, key=key, password=password,
            saved=_demo_credentials(cfg),
        )  # fmt: skip
        print(banner, flush=True)
        await stop.wait()
        await gateway.cleanup()  # stops the simulator too (switch.stop_on_exit)

    try:
        return run_server(main, "gwproxy demo")
    finally:
        shutil.rmtree(work, ignore_errors=True)


DEMO_KEY_DAYS = 30  # a demo key left behind stops working on its own


def _demo_credentials(cfg: Config) -> Path:
    """Where the demo keeps its password and key for the next run: ``.gwproxy/demo.json`` beside
    its SQLite database (mode 0600)."""
    return Path(cfg.database.sqlite_path).resolve().parent / ".gwproxy" / "demo.json"


async def _demo_account(cfg: Config, saved: Path) -> tuple[str, str]:
    """Migrate the demo database and return the demo user's password and API key: the ones the
    last run saved while they still work, else new ones (the database keeps only their hashes,
    so they are saved for the next run in ``saved``, readable by this user only). The key expires
    after ``DEMO_KEY_DAYS``."""
    import json

    from gwproxy.auth.tokens import TokenCodec
    from gwproxy.auth.users import UserService
    from gwproxy.errors import NotFound
    from gwproxy.store import migrator
    from gwproxy.store.engine import create_engine

    engine = create_engine(cfg.database)
    try:
        await migrator.upgrade(engine)
        users = UserService(engine, TokenCodec(cfg.auth, demo=True), cfg.auth.refresh_expire_days)
        try:
            last = json.loads(await asyncio.to_thread(saved.read_text))
            key, password = str(last["key"]), str(last["password"])
            if await users.resolve_key(key) is not None and await users.authenticate("demo", password) is not None:
                return key, password
        except (OSError, ValueError, KeyError, TypeError):
            pass  # first run, or a file from elsewhere: make new ones
        password = secrets.token_urlsafe(12)
        try:
            user = await users.find_user("demo")
            await users.set_password(user.id, password)
        except NotFound:
            user = await users.create_user("demo", password, "admin")
        key, _ = await users.create_key(user.id, "make run", expires_days=DEMO_KEY_DAYS)
        saved.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"key": key, "password": password}, out)
        return key, password
    finally:
        await engine.dispose()


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    demo = sub.add_parser(
        "demo", parents=[common], help="the gateway in front of a bundled simulator, on embedded defaults"
    )
    demo.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    demo.add_argument("--port", type=int, help="port to listen on (default 8080)")
    demo.set_defaults(func=cmd_demo)
