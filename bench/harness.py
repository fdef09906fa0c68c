"""Harness: what the benchmarks share — the processes they start (pinned to a core), the
services (nginx, the simulator, the proxies under test), wrk and the asyncio load clients, CPU
and callgrind instruction counts, and the gateway's own provisioning."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
RESULTS = ROOT / "bench" / "results"
PROXY_CORE, LOAD_CORE = "0", "1"
MODEL = "bench-model"
CHAT = (
    '{"model":"%s","messages":[{"role":"user","content":"Write one short sentence about gateways."}],"max_tokens":16}'
    % MODEL
)
TICK = os.sysconf("SC_CLK_TCK")
JWT_SECRET = "bench-secret-" + "b" * 40
# Every target gets the same request bytes: the gateway checks the key, the others ignore it.
HEADERS = {"Content-Type": "application/json"}


def gateway_argv(port: int, upstream_v1: str) -> list[str]:
    """The gateway as an operator starts it."""
    return [
        sys.executable,
        "-m",
        "gwproxy",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--upstream",
        upstream_v1,
    ]


def provision() -> dict[str, str]:
    """A migrated SQLite database with a user and an API key, made through the command line;
    returns the gateway's environment and puts the key in HEADERS."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{WORK}/bench.db",
        "JWT_SECRET": JWT_SECRET,
        "LOG_LEVEL": "info",
        "RATE_LIMIT_REQUESTS": "1000000000",  # limits on, never reached: the bench measures their cost
        # Capture off for the core comparisons, so each isolates one thing (the limiter, auth, the
        # proxy itself); capture's own cost is measured apart, on and off, on PostgreSQL.
        "GWPROXY_CAPTURE_ENABLED": "false",
    }
    (WORK / "bench.db").unlink(missing_ok=True)
    cli = [sys.executable, "-m", "gwproxy"]
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
    subprocess.run(
        [*cli, "user", "add", "bench", "--password-stdin"],
        input=b"bench-password\n",
        env=env,
        check=True,
        capture_output=True,
    )
    key = subprocess.run(
        [*cli, "key", "create", "--user", "bench"], env=env, check=True, capture_output=True, text=True
    )
    HEADERS["Authorization"] = f"Bearer {key.stdout.strip()}"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or HEADERS), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass
class Procs:
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], core: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (WORK / f"{name}.log").open("wb")
        p = subprocess.Popen(
            ["taskset", "-c", core, *argv], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


@contextmanager
def services(env: dict[str, str]) -> Iterator[dict[str, int]]:
    """Start the simulator, nginx, and for each upstream a bare proxy and a gateway."""
    procs = Procs()
    ports = {
        k: free_port()
        for k in ("sim", "nginx", "redis", "bare_sim", "gw_sim", "bare_nginx", "gw_nginx", "gw_nolimit", "gw_redis")
    }
    py = sys.executable
    try:
        procs.spawn(
            "sim",
            [
                py,
                "-m",
                "gwproxy",
                "sim",
                "--port",
                str(ports["sim"]),
                "--model",
                MODEL,
                "--max-model-len",
                "8192",
                "--itl-ms",
                "20",
            ],
            LOAD_CORE,
        )
        wait_http(f"http://127.0.0.1:{ports['sim']}/health")
        fixed = urllib.request.urlopen(
            urllib.request.Request(
                f"http://127.0.0.1:{ports['sim']}/v1/chat/completions",
                data=CHAT.encode(),
                headers={"Content-Type": "application/json"},
            )
        ).read()
        models = urllib.request.urlopen(f"http://127.0.0.1:{ports['sim']}/v1/models").read()
        conf = nginx_conf(ports["nginx"], fixed, models)
        procs.spawn("nginx", ["/usr/sbin/nginx", "-c", str(conf), "-p", str(WORK)], LOAD_CORE)
        wait_http(f"http://127.0.0.1:{ports['nginx']}/v1/models")
        for up in ("sim", "nginx"):
            origin = f"http://127.0.0.1:{ports[up]}"
            procs.spawn(
                f"bare_{up}", [py, str(ROOT / "bench" / "bare_proxy.py"), str(ports[f"bare_{up}"]), origin], PROXY_CORE
            )
            gw = procs.spawn(f"gw_{up}", gateway_argv(ports[f"gw_{up}"], origin + "/v1"), PROXY_CORE, env)
            ports[f"pid_gw_{up}"] = gw.pid
            ports[f"pid_bare_{up}"] = procs.procs[-2].pid
        # The limiter's own cost: the same gateway without it, and with its buckets in Redis.
        procs.spawn(
            "redis",
            ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            LOAD_CORE,
        )
        nginx_v1 = f"http://127.0.0.1:{ports['nginx']}/v1"
        for name, extra in (
            ("gw_nolimit", {"GWPROXY_RATELIMIT_ENABLED": "false"}),
            ("gw_redis", {"REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0"}),
        ):
            ports[f"pid_{name}"] = procs.spawn(
                name, gateway_argv(ports[name], nginx_v1), PROXY_CORE, {**env, **extra}
            ).pid
        for key in ("bare_sim", "gw_sim", "bare_nginx", "gw_nginx", "gw_nolimit", "gw_redis"):
            wait_http(f"http://127.0.0.1:{ports[key]}/v1/models")
        wait_http(f"http://127.0.0.1:{ports['gw_nginx']}/health/ready")
        yield ports
    finally:
        procs.stop()


def nginx_conf(port: int, chat: bytes, models: bytes) -> Path:
    def lit(b: bytes) -> str:
        return b.decode().replace("\\", "\\\\").replace("'", "\\'")

    (WORK / "tmp").mkdir(exist_ok=True)
    conf = WORK / "nginx.conf"
    conf.write_text(
        f"""daemon off; master_process off; worker_processes 1; pid {WORK}/nginx.pid;
error_log {WORK}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off; keepalive_requests 10000000; keepalive_timeout 120s;
  client_body_temp_path {WORK}/tmp; proxy_temp_path {WORK}/tmp; fastcgi_temp_path {WORK}/tmp;
  uwsgi_temp_path {WORK}/tmp; scgi_temp_path {WORK}/tmp;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    default_type application/json;
    location = /v1/models {{ return 200 '{lit(models)}'; }}
    location = /health {{ return 200 ''; }}
    location = /v1/chat/completions {{ return 200 '{lit(chat)}'; }}
  }}
}}
"""
    )
    return conf


def wrk(url: str, conns: int, seconds: int, headers: dict[str, str] | None = None) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, requests) from wrk on the load core."""
    script = WORK / "post.lua"
    lines = ["wrk.method = 'POST'", f"wrk.body = '{CHAT}'"] + [
        f"wrk.headers['{k}'] = '{v}'" for k, v in (headers or HEADERS).items()
    ]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return rps, pct("50"), pct("99"), total


def pctl(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def ttfb(url: str, n: int) -> list[float]:
    body = CHAT.replace('"max_tokens":16', '"max_tokens":4,"stream":true').encode()
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(url, data=body, headers=HEADERS) as r:
                await r.content.readany()
                out.append((time.perf_counter() - t0) * 1000)
                await r.read()
    return out


async def paced(url: str, streams: int, tokens: int) -> tuple[list[float], int, float]:
    """Inter-chunk gaps (ms) seen by ``streams`` concurrent clients; chunks; wall seconds."""
    body = CHAT.replace('"max_tokens":16', f'"max_tokens":{tokens},"ignore_eos":true,"stream":true').encode()
    gaps: list[float] = []
    chunks = 0

    async def one(s: aiohttp.ClientSession) -> None:
        nonlocal chunks
        async with s.post(url, data=body, headers=HEADERS) as r:
            last = None
            async for _ in r.content.iter_any():
                now = time.perf_counter()
                chunks += 1
                if last is not None:
                    gaps.append((now - last) * 1000)
                last = now

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(*(one(s) for _ in range(streams)))
    return gaps, chunks, time.perf_counter() - t0


def sequential(port: int, n: int, headers: dict[str, str] | None = None) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(n):
        conn.request("POST", "/v1/chat/completions", body=CHAT, headers=headers or HEADERS)
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
    conn.close()


def instructions_per_request(
    name: str, argv: list[str], port: int, n: int, env: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> float:  # fmt: skip
    """CPU instructions a proxy executes per request, counted by callgrind: unlike CPU time on a
    shared virtual machine, the count does not change with what the neighbours do."""
    out = WORK / f"callgrind.{name}"
    for old in WORK.glob(f"callgrind.{name}*"):
        old.unlink()
    log = (WORK / f"callgrind-{name}.log").open("wb")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv], stdout=log, stderr=log, env=env
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", timeout=300, headers=headers)
        sequential(port, 50, headers)
        time.sleep(1)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        sequential(port, n, headers)
        time.sleep(1)  # the last records handed on
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    dumps = sorted(WORK.glob(f"callgrind.{name}.*"))
    text = dumps[0].read_text(errors="replace")
    total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    assert total, f"no totals in {dumps[0]}"
    return int(total.group(1)) / n


async def auth_cost(env: dict[str, str]) -> dict[str, float]:
    """CPU microseconds the authenticator spends on a warm (cached) API key and JWT, in process."""
    from gwproxy.auth.authenticator import Authenticator
    from gwproxy.auth.tokens import TokenCodec
    from gwproxy.auth.users import UserService
    from gwproxy.config import load_config
    from gwproxy.store.engine import create_engine

    cfg = load_config(env=env)
    engine = create_engine(cfg.database)
    codec = TokenCodec(cfg.auth)
    users = UserService(engine, codec, 30)
    auth = Authenticator(users, codec, ttl=3600)
    user = await users.find_user("bench")
    token = (await users.open_session(user)).access_token
    out = {}
    for name, headers in (
        ("auth_key_us", {"Authorization": HEADERS["Authorization"]}),
        ("auth_jwt_us", {"Authorization": f"Bearer {token}"}),
    ):
        await auth.authenticate(headers)
        n = 20000
        t0 = time.process_time()
        for _ in range(n):
            await auth.authenticate(headers)
        out[name] = (time.process_time() - t0) / n * 1e6
    await engine.dispose()
    return out


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
