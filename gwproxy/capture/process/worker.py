"""Worker: the capture writer's own process (``python -m gwproxy.capture.process.worker``), started and
fed by the gateway's ``Courier``.

Protocol, over the pipes the gateway opened:
- stdin: first line, the settings (JSON: ``capture``, ``database``, ``log_level``, ``json_logs``,
  ``report_fd``); then one record per line: the courier's number for it (1, 2, 3, … for this
  process), a space, the wire line (``record.wire``).
- ``report_fd``: the writer's counters as one JSON line (``written``, ``spooled``, ``replayed``,
  ``dropped``, ``rejected``, ``queue``) and ``acked``, the highest number up to which every line
  is written, spooled or set aside, at start, whenever they change (at most every
  ``REPORT_SECONDS``), and once more at exit. The courier keeps each line until it is acked and
  gives the unacked ones to the next worker if this one dies; the writer skips a record whose id
  is already stored, so a line written but not yet acked is stored once.
- stdout: log lines, into the gateway's own log stream.

End of stdin (the gateway closing, or dying) or SIGTERM means: stop reading, drain — write what
is queued, spool what cannot be written (``CaptureWriter.close``) — report, exit. The process
runs in its own session, so a Ctrl-C meant for the gateway's terminal does not cut the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from typing import Any

import orjson
import uvloop

from gwproxy import log as logconf
from gwproxy.capture.counters import Counters
from gwproxy.capture.writer import CaptureWriter
from gwproxy.config import CaptureConfig, DatabaseConfig
from gwproxy.store.engine import create_engine

REPORT_SECONDS = 0.2
GC_YOUNG = 10_000  # allocations between young collections (Python's default: 700)

_log = logconf.get("gwproxy.capture")


def report(counters: Counters, acks: Acks | None = None) -> dict[str, int]:
    """What the worker tells the courier: its counts, its queue, the lines it is done with."""
    out = counters.snapshot()
    if acks is not None:
        out["acked"] = acks.acked
    return out


class Acks:
    """The highest line number up to which every line is done (numbers may finish out of order)."""

    def __init__(self) -> None:
        self.acked = 0
        self._done: set[int] = set()

    def confirm(self, seqs: list[int]) -> None:
        self._done.update(seqs)
        while self.acked + 1 in self._done:
            self.acked += 1
            self._done.remove(self.acked)


class _Intake(asyncio.Protocol):
    """Numbered lines from stdin → the writer; end of input sets ``done``."""

    def __init__(self, writer: CaptureWriter, done: asyncio.Event) -> None:
        self.writer = writer
        self.done = done
        self.partial = b""

    def data_received(self, data: bytes) -> None:
        *lines, self.partial = (self.partial + data).split(b"\n")
        for line in lines:
            if line:
                number, _, record = line.partition(b" ")
                self.writer.submit(record, int(number))

    def eof_received(self) -> bool | None:
        self.done.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set()


async def _report(fd: int, counters: Counters, acks: Acks, stop: asyncio.Event) -> None:
    last: dict[str, int] = {}
    while True:
        now = report(counters, acks)
        if now != last:
            try:
                os.write(fd, orjson.dumps(now) + b"\n")
            except OSError:  # the gateway is gone (killed): nobody to tell, the drain goes on
                return
            last = now
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REPORT_SECONDS)


async def run(settings: dict[str, Any]) -> None:
    cfg = CaptureConfig(**settings["capture"])
    engine = create_engine(DatabaseConfig(**settings["database"]))
    counters = Counters()
    writer = CaptureWriter(cfg, engine, counters)
    acks = Acks()
    writer.confirm = acks.confirm
    writer.start()
    # Start-up objects (SQLAlchemy's and asyncpg's) live as long as the process: keep them out of
    # the cyclic collector's scans, which the queued records would otherwise trigger over and over.
    # A batch is a few thousand short-lived acyclic dicts: with the default thresholds the young
    # collections rescanned it every 700 allocations (~20 µs per record, a sixth of the writer's
    # CPU, measured); collect fourteen times less often.
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 20, 20)
    loop = asyncio.get_running_loop()
    done, reported = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    reporter = asyncio.create_task(_report(settings["report_fd"], counters, acks, reported))
    transport, _ = await loop.connect_read_pipe(lambda: _Intake(writer, done), sys.stdin.buffer)
    try:
        await done.wait()
    finally:
        transport.close()
        await writer.close()
        await engine.dispose()
        reported.set()
        await reporter


def _first_line() -> bytes:
    """The settings line, read from the descriptor a byte at a time: a buffered read could take
    records past it that the pipe reader would then never see."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            break
        line += byte
    return bytes(line)


NICENESS = 10


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway decides when this process ends
    os.nice(NICENESS)  # background work: where it shares a core, request handling comes first
    settings = orjson.loads(_first_line())
    logconf.configure(settings["log_level"], json=settings["json_logs"])
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(settings))


if __name__ == "__main__":
    main()
