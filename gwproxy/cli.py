"""Command line: ``gwproxy serve | sim | demo`` (and, from their modules, ``migrate | user | key``,
``profiles | hardware``).

Flags win over the environment, which wins over config.toml, which wins over built-in defaults
(``gwproxy.config``). Every long-running command stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import gc
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from gwproxy import __version__
from gwproxy import log as logconf
from gwproxy.config import Config, ConfigError, ServerConfig, load_config, without_credentials
from gwproxy.connections import GuardedRunner


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)`` on uvloop; SIGINT/SIGTERM set ``stop``."""

    async def runner() -> None:
        # Objects created at start-up live as long as the process: keep them out of the cyclic
        # collector's scans, which otherwise grow with every imported module.
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    loop = _event_loop()
    try:
        loop.run_until_complete(runner())
    finally:
        loop.close()


async def _serve_app(app: web.Application, server: ServerConfig, reuse_port: bool = False) -> web.AppRunner:
    """Start serving. On shutdown (``runner.cleanup``) the listening socket closes first, then
    requests in flight — streams included — get ``shutdown_timeout`` seconds to finish, then the
    cleanup contexts close in reverse order (limiter settles, pools close)."""
    runner = GuardedRunner(
        app, guards=server, handler_cancellation=True, access_log=None, shutdown_timeout=server.shutdown_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, server.host, server.port, reuse_address=True, reuse_port=reuse_port).start()
    except OSError as exc:
        await runner.cleanup()  # what start-up began (a model the switcher started) is stopped again
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(server.host, server.port) from None
        raise
    return runner


class PortInUse(Exception):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host}:{port}")
        self.host, self.port = host, port


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    try:
        return load_config(Path(args.config) if args.config else None, overrides=overrides or {})
    except ConfigError as exc:
        print(f"gwproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(
        args,
        {
            "server.host": args.host,
            "server.port": args.port,
            "upstream.base_url": args.upstream,
            "server.workers": args.workers,
        },
    )
    if cfg.server.workers > 1:
        return _serve_workers(cfg)
    return _serve_one(cfg, reuse_port=False)


def _serve_one(cfg: Config, reuse_port: bool) -> int:
    from gwproxy.app import create_app

    logconf.configure(cfg.server.log_level, json=not cfg.server.debug)
    log = logconf.get("gwproxy")

    async def main(stop: asyncio.Event) -> None:
        app = create_app(cfg)
        runner = await _serve_app(app, cfg.server, reuse_port)
        upstream = without_credentials(cfg.upstream.base_url)
        log.info("gwproxy serving", host=cfg.server.host, port=cfg.server.port, upstream=upstream)
        await stop.wait()
        log.info("gwproxy stopping", shutdown_timeout=cfg.server.shutdown_timeout)
        await runner.cleanup()

    return _run_server(main)


def _serve_workers(cfg: Config) -> int:
    """``server.workers`` processes on one port (SO_REUSEPORT: the kernel spreads connections);
    SIGTERM/SIGINT are passed on to each, which shuts down gracefully."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    n = cfg.server.workers
    workers = [ctx.Process(target=_serve_worker, args=(_worker_config(cfg, i),)) for i in range(n)]
    for w in workers:
        w.start()

    def forward(signum: int, _frame: object) -> None:
        for w in workers:
            if w.pid is not None and w.is_alive():
                os.kill(w.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for w in workers:
        w.join()
    return max((w.exitcode or 0) for w in workers)


def _serve_worker(cfg: Config) -> None:
    sys.exit(_serve_one(cfg, reuse_port=True))


def _worker_config(cfg: Config, index: int) -> Config:
    """Worker ``index``'s configuration: its own capture spool (one writer per spool file), which
    the worker of the same index replays after a restart."""
    spool = str(Path(cfg.capture.spool_dir) / f"worker-{index}")
    return dataclasses.replace(cfg, capture=dataclasses.replace(cfg.capture, spool_dir=spool))


def _run_server(main: Callable[[asyncio.Event], Awaitable[None]], command: str = "gwproxy serve") -> int:
    """Run a server; a configuration problem found at start-up ends it with a message, exit 2; a
    port another server holds, with a one-line message naming another, exit 1."""
    try:
        _run(main)
    except ConfigError as exc:
        print(f"gwproxy: {exc}", file=sys.stderr)
        return 2
    except PortInUse as exc:
        print(_port_message(exc.host, exc.port, command), file=sys.stderr)
        return 1
    return 0


def _sim_config(args: argparse.Namespace, models: Sequence[str]) -> Any:
    from gwproxy.sim.server import SimConfig

    return SimConfig(
        models=tuple(models),
        max_model_len=args.max_model_len,
        ttft_ms=args.ttft_ms,
        itl_ms=args.itl_ms,
        seed=args.seed,
        reasoning=bool(args.reasoning_parser),
        split_writes=args.split_writes,
    )


def cmd_sim(args: argparse.Namespace) -> int:
    from gwproxy.sim import server

    cfg = _sim_config(args, args.served_model_name or args.model or ["sim-model"])
    logconf.configure("info", json=False)
    log = logconf.get("gwproxy.sim")

    async def main(stop: asyncio.Event) -> None:
        if args.startup_delay > 0 or args.fail_on_start:
            await server.load(cfg, args.startup_delay, args.fail_on_start)
        starting = asyncio.create_task(server.serve(cfg, args.host, args.port))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return
        runner = starting.result()
        log.info("simulator serving", host=args.host, port=args.port, models=list(cfg.models))
        print("INFO Application startup complete.", flush=True)
        await stopped
        await runner.cleanup()

    _run(main)
    return 0


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

Swap the model (the second demo profile) and watch it happen:

curl -X POST http://{host}:{port}/api/models/switch -H 'Authorization: Bearer {key}' \\
  -H 'Content-Type: application/json' -d '{{"profile_id": "demo-model-large"}}'
curl -N http://{host}:{port}/api/models/events -H 'Authorization: Bearer {key}'

Examples: examples/ (GWPROXY_API_KEY={key} python examples/chat.py)
Health: http://{host}:{port}/health   Metrics: http://{host}:{port}/metrics
API docs: http://{host}:{port}/docs
Press Ctrl-C to stop.
"""


# The demo's two "models": the simulator, started and swapped by the process backend.
DEMO_PROFILES: dict[str, dict[str, Any]] = {
    "demo-model": {"name": "Demo model", "default": True},
    "demo-model-large": {"name": "Demo model (large)"},
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

    sim_port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="gwproxy-demo-"))
    _demo_profiles(work / "profiles")
    cfg = _load(
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
            "capture.spool_dir": str(work / "spool"),
            "server.docs": "true",
        },
    )
    logconf.configure(cfg.server.log_level, json=False)
    if _port_taken(cfg.server.host, cfg.server.port):  # say so before starting anything
        shutil.rmtree(work, ignore_errors=True)
        print(_port_message(cfg.server.host, cfg.server.port, "gwproxy demo"), file=sys.stderr)
        return 1

    async def main(stop: asyncio.Event) -> None:
        key, password = await _demo_account(cfg, _demo_credentials(cfg))
        app = create_app(cfg, demo=True)
        gateway = await _serve_app(app, cfg.server)
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
        return _run_server(main, "gwproxy demo")
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


def _port_taken(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound (another server has it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _port_message(host: str, port: int, command: str) -> str:
    return (
        f"gwproxy: port {port} on {host} is already in use (another gateway?); "
        f"choose another: {command} --port {port + 1}"
        + (f"  (make run PORT={port + 1})" if command.endswith("demo") else "")
    )


def build_parser() -> argparse.ArgumentParser:
    from gwproxy import accounts_cli, models_cli

    parser = argparse.ArgumentParser(prog="gwproxy", description="OpenAI-compatible gateway for self-hosted vLLM")
    parser.add_argument("--version", action="version", version=f"gwproxy {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config.toml to read (default: $GWPROXY_CONFIG or ./config.toml)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--upstream", help="vLLM base URL, as VLLM_BASE_URL (e.g. http://localhost:8000/v1)")
    serve.add_argument("--workers", type=int, help="processes sharing the port (default 1)")
    serve.set_defaults(func=cmd_serve)

    sim = sub.add_parser("sim", help="run the vLLM-compatible simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8000)
    sim.add_argument("--model", action="append", help="served model name (repeatable), as vLLM's --model")
    sim.add_argument("--served-model-name", nargs="+", help="served names, as vLLM's (overrides --model)")
    sim.add_argument("--max-model-len", type=int, default=4096)
    sim.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    sim.add_argument("--itl-ms", type=float, default=0.0, help="inter-token latency")
    sim.add_argument("--seed", type=int, help="make output, ids and timestamps a function of the request")
    sim.add_argument(
        "--startup-delay", type=float, default=0.0, help="seconds the port stays closed, printing vLLM's load lines"
    )
    sim.add_argument("--fail-on-start", metavar="MESSAGE", help="fail half-way through start-up, exit 1")
    sim.add_argument(
        "--reasoning-parser",
        metavar="NAME",
        help="as vLLM's: a reasoning model, whose answers start with reasoning_content (any name)",
    )
    sim.add_argument(
        "--split-writes",
        action="store_true",
        help="write each stream event in three parts, cutting UTF-8 characters, to test a relay's partial reads",
    )
    sim.set_defaults(func=cmd_sim)

    demo = sub.add_parser(
        "demo", parents=[common], help="the gateway in front of a bundled simulator, on embedded defaults"
    )
    demo.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    demo.add_argument("--port", type=int, help="port to listen on (default 8080)")
    demo.set_defaults(func=cmd_demo)

    accounts_cli.add_parsers(sub, common, _load)
    models_cli.add_parsers(sub, common, _load)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the simulator takes a vLLM command line as is, ignoring the flags it has no use for
        if args.command != "sim" or not all(a.startswith("--") or not a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        print(f"gwproxy sim: ignoring vLLM flags: {' '.join(extra)}", file=sys.stderr)
    code: int = args.func(args)
    return code
