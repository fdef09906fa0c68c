"""A gateway process against clients that hold connections open or send malformed requests:
half-open heads are closed, idle connections are bounded, one address can be capped, and
nothing aiohttp logs about a broken request shows the credential it carried."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Gateway, provision
from tests.support.procs import start_gateway


@pytest.fixture(scope="module")
def guarded(log_dir: Path, sim: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env, key = provision(tmp_path_factory.mktemp("guarded"))
    env = {
        **env,
        "GWPROXY_SERVER_HEADER_TIMEOUT": "1",
        "GWPROXY_SERVER_KEEPALIVE_TIMEOUT": "2",
        "GWPROXY_SERVER_MAX_CONNECTIONS_PER_ADDRESS": "6",
    }
    proc, port = start_gateway(log_dir, sim, env=env, name="gateway-guarded")
    yield Gateway(proc, port, key, env)
    proc.stop()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def closed_after(s: socket.socket, limit: float) -> float | None:
    """Seconds until the server closes ``s`` (reading and discarding what it sends), or None."""
    started = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_head_that_never_finishes_is_closed(guarded: Gateway) -> None:
    s = connect(guarded.port)
    s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
    waited = closed_after(s, 5)
    assert waited is not None and waited < 2.5  # header_timeout = 1 s
    s.close()


def test_a_trickled_head_is_closed_too_and_a_prompt_one_is_served(guarded: Gateway) -> None:
    s = connect(guarded.port)
    started = time.monotonic()
    with pytest.raises(OSError):  # the server closes while the client still trickles
        for _ in range(40):
            s.sendall(b"X-a: b\r\n" if time.monotonic() - started > 0.01 else b"GET / HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.1)
    assert time.monotonic() - started < 3
    s.close()
    s = connect(guarded.port)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    waited = closed_after(s, 5)  # idle after its response: closed by keepalive_timeout = 2 s
    assert waited is not None and 1.5 < waited < 3.5
    s.close()


def test_an_idle_new_connection_is_closed(guarded: Gateway) -> None:
    s = connect(guarded.port)
    waited = closed_after(s, 5)
    assert waited is not None and waited < 3.5
    s.close()


def test_connections_per_address_are_capped(guarded: Gateway) -> None:
    held = [connect(guarded.port) for _ in range(6)]
    extra = connect(guarded.port)
    assert closed_after(extra, 1) is not None  # the seventh from this address: closed at once
    extra.close()
    held[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert held[0].recv(65536).startswith(b"HTTP/1.1 200")  # the ones held are served
    for s in held:
        s.close()
    time.sleep(0.2)
    s = connect(guarded.port)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200")  # closed ones no longer count
    s.close()


MALFORMED = [
    b"GET /v1/models HTTP/1.1\nHost: x\nAuthorization: Bearer {key}\n\n",  # bare LF line endings
    b"G@T /v1/models HTTP/1.1\r\nAuthorization: Bearer {key}\r\n\r\n",  # invalid method
    b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer {key}\r\nBad Header: x\r\n\r\n",  # space in a name
    b"GET /v1/models HTTP/1.1\r\nx-api-key: {key}\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",  # line too long
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\napi-key: {key}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer {key}\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # both framings
    b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer {key}\r\nHost: x\x00y\r\n\r\n",  # NUL in a value
    b"GET /v1/models HTTP/9.9\r\nAuthorization: Bearer {key}\r\n\r\n",  # unknown version
]


def test_malformed_requests_never_put_the_credential_in_the_logs(guarded: Gateway) -> None:
    for template in MALFORMED:
        s = connect(guarded.port)
        s.sendall(template.replace(b"{key}", guarded.key.encode()))
        closed_after(s, 3)
        s.close()
    time.sleep(0.5)
    out = guarded.proc.output()
    assert "Error handling request" in out or "BadHttpMessage" in out or "BadStatusLine" in out or '"status":400' in out
    secret = guarded.key[12:]  # past the prefix, which is not secret
    for line in out.splitlines():
        assert secret not in line, line[:300]
    assert "[REDACTED]" in out  # aiohttp did quote a head, and it was redacted
