"""``gwproxy serve``: the gateway, in one process or ``server.workers`` sharing the port.

Flags win over the environment, which wins over config.toml, which wins over built-in defaults
(``gwproxy.config``). It stops cleanly on SIGINT or SIGTERM, letting requests in flight finish.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gwproxy import log as logconf
from gwproxy.cli.common import load, run_server, serve_app
from gwproxy.config import Config


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load(
        args,
        {
            "server.host": args.host,
            "server.port": args.port,
            "upstreams": args.upstream,
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
        runner = await serve_app(app, cfg.server, reuse_port)
        upstreams = [f"{t.name}={t.public_v1_url}" for t in cfg.upstream_targets()]
        log.info("gwproxy serving", host=cfg.server.host, port=cfg.server.port, upstreams=upstreams)
        await stop.wait()
        log.info("gwproxy stopping", shutdown_timeout=cfg.server.shutdown_timeout)
        await runner.cleanup()

    return run_server(main)


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


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when this host's gateway answers ``/health`` on its configured port (what a container
    HEALTHCHECK runs), else 1 with the reason on one line."""
    import urllib.request

    cfg = load(args)
    host = "127.0.0.1" if cfg.server.host in ("0.0.0.0", "", "::") else cfg.server.host
    url = f"http://{host}:{cfg.server.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            status = json.loads(resp.read()).get("status", "?")
    except (OSError, ValueError) as exc:
        print(f"gwproxy: {url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {status}")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    check = sub.add_parser("healthcheck", parents=[common], help="exit 0 if this host's gateway answers /health")
    check.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    check.set_defaults(func=cmd_healthcheck)
    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument(
        "--upstream",
        action="append",
        metavar="[NAME=]URL",
        help="a vLLM base URL (e.g. http://localhost:8000/v1); repeat it for several upstreams, named or not "
        "(default: VLLM_BASE_URL)",
    )
    serve.add_argument("--workers", type=int, help="processes sharing the port (default 1)")
    serve.set_defaults(func=cmd_serve)
