"""Common: what every command shares — configuration loading, running a server (uvloop, signals,
a taken port said in one line), and output (tables with headers or ``--json``, one line on stderr
per result, colour only for a terminal without ``NO_COLOR``)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from gwproxy import log as logconf
from gwproxy.config import Config, ConfigError, ServerConfig, load_config
from gwproxy.connections import GuardedRunner


def event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
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

    loop = event_loop()
    try:
        loop.run_until_complete(runner())
    finally:
        loop.close()


async def serve_app(app: web.Application, server: ServerConfig, reuse_port: bool = False) -> web.AppRunner:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Config:
    try:
        return load_config(Path(args.config) if args.config else None, overrides=overrides or {})
    except ConfigError as exc:
        print(f"gwproxy: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_server(main: Callable[[asyncio.Event], Awaitable[None]], command: str = "gwproxy serve") -> int:
    """Run a server; a configuration problem found at start-up ends it with a message, exit 2; a
    port another server holds, with a one-line message naming another, exit 1."""
    try:
        run(main)
    except ConfigError as exc:
        print(f"gwproxy: {exc}", file=sys.stderr)
        return 2
    except PortInUse as exc:
        print(port_message(exc.host, exc.port, command), file=sys.stderr)
        return 1
    return 0


def port_taken(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be bound (another server has it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def port_message(host: str, port: int, command: str) -> str:
    return (
        f"gwproxy: port {port} on {host} is already in use (another gateway?); "
        f"choose another: {command} --port {port + 1}"
        + (f"  (make run PORT={port + 1})" if command.endswith("demo") else "")
    )


def say(message: str) -> None:
    """The one line a command prints about what it did (stderr: stdout is for results)."""
    print(message, file=sys.stderr)


def fail(message: str, code: int = 1) -> int:
    print(f"gwproxy: {message}", file=sys.stderr)
    return code


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Rows as aligned columns under a header line; ``columns`` are (key, header) pairs."""
    cells = [[h for _, h in columns]] + [["" if r.get(k) is None else str(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    header = "  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip()
    if logconf.use_color(sys.stdout):
        header = f"\033[1m{header}\033[0m"
    lines = [header] + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells[1:]]
    return "\n".join(lines)


def show(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], as_json: bool) -> None:
    """A listing on stdout: a table with headers, or (``--json``) a JSON array of the rows."""
    if as_json:
        print(json.dumps(list(rows), indent=2, default=str))
    else:
        print(table(rows, columns))


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table (for scripts)")
