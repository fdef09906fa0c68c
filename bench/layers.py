"""Layers: where the gateway's instructions per request go — callgrind counts of the gateway with
its layers switched off one at a time (auth, the rate limiter, the access log), and with all of
them off, against the bare aiohttp pass-through, all in front of the same nginx. What is left with
everything off is the gateway's own request path: middleware dispatch, the exchange, the proxy and
the relay. Appends its table to the day's results file (``python -m bench.layers``)."""

from __future__ import annotations

import datetime
import os
import sys

from bench.harness import (
    RESULTS,
    ROOT,
    WORK,
    free_port,
    gateway_argv,
    instructions_per_request,
    provision,
    services,
)

N = 300
VARIANTS = (
    ("gateway (defaults, capture off)", {}),
    ("without auth", {"GWPROXY_AUTH_ENABLED": "false"}),
    ("without the rate limiter", {"GWPROXY_RATELIMIT_ENABLED": "false"}),
    ("without the access log", {"LOG_LEVEL": "warning"}),
    ("without auth, limiter, access log", {"GWPROXY_AUTH_ENABLED": "false", "GWPROXY_RATELIMIT_ENABLED": "false",
                                           "LOG_LEVEL": "warning"}),
)  # fmt: skip


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    env = provision()
    rows: list[tuple[str, float]] = []
    with services(env) as p:
        origin = f"http://127.0.0.1:{p['nginx']}"
        port = free_port()
        bare = instructions_per_request(
            "layers-bare", [sys.executable, str(ROOT / "bench" / "bare_proxy.py"), str(port), origin], port, N
        )
        for i, (name, extra) in enumerate(VARIANTS):
            port = free_port()
            count = instructions_per_request(
                f"layers-{i}", gateway_argv(port, origin + "/v1"), port, N, {**env, **extra}
            )
            rows.append((name, count))
    lines = [
        "",
        "## Where the gateway's instructions go (callgrind, sequential requests)",
        "",
        f"Each proxy in front of the same nginx, {N} requests after 50 of warm-up, instructions per request.",
        "",
        "| proxy | instructions per request (thousands) | × bare |",
        "|---|---|---|",
        f"| bare aiohttp pass-through | {bare / 1000:.0f} | 1.00 |",
    ]
    lines += [f"| {name} | {count / 1000:.0f} | {count / bare:.2f} |" for name, count in rows]
    text = "\n".join(lines) + "\n"
    out = RESULTS / f"{datetime.date.today().isoformat()}.md"
    with out.open("a") as f:
        f.write(text)
    print(text)
    print(f"appended to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    os.sched_setaffinity(0, {1})
    main()
