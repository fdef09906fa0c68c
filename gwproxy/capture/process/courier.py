"""Courier: hands captured records to the writer process (``worker``), so that parsing,
threading and database writes run on another core than the gateway's event loop.

The worker starts with the first record (a gateway that captures nothing pays nothing), or at
once when the spool holds records from an earlier run. ``submit`` (never blocks, never raises)
queues a record's wire line (``record.wire``); the lines are written to the worker's stdin
together, ``FLUSH_SECONDS`` after the first of them (one write per burst, not one per request).
The worker's counter reports become the gateway's capture metrics, so ``/metrics`` reads the
same as with the writer in process.

Nothing is dropped while the disk spool has room. Each line handed to a worker is numbered and
kept here until the worker acknowledges it written or spooled (``worker``'s ``acked`` report):
- the worker dies (a bug, or killed): it is started again after ``RESTART_SECONDS``; the lines
  it had not acknowledged go first, then the lines submitted meanwhile, to the spool (while no
  worker runs) or to the new worker, which replays the spool first. A line the dead worker had
  written but not yet acknowledged is resent and skipped by the writer (its id is stored), so each
  turn is stored once, in order.
- the worker stops reading (stuck): lines wait here, up to ``capture.queue_size``; past that
  they are dropped, counted and logged — the spool is the worker's to write while it runs.
- shutdown (``close``): the remaining lines are written, stdin is closed, and the worker drains
  (writes or spools its queue) and exits; the gateway waits for it (``4 × write_timeout + 10`` s
  at most, then kills it).

The worker's lifecycle is ``WorkerState``: idle (none yet; the first record starts one) →
starting → running → down (exited or failed to start: started again after ``RESTART_SECONDS``)
→ … → closing → closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy import log
from gwproxy.capture.counters import NAMES, Counters
from gwproxy.capture.record import RecordSink
from gwproxy.capture.spool import Spool
from gwproxy.capture.writer import CaptureWriter
from gwproxy.config import Config
from gwproxy.metrics import Metrics

FLUSH_SECONDS = 0.005
RESTART_SECONDS = 1.0
MAX_UNREAD_BYTES = 8 * 1024 * 1024  # written to the pipe, not yet read by the worker

_log = log.get("gwproxy.capture")


class WorkerState(Enum):
    IDLE = "idle"  # no worker yet: the first record (or a spool to replay) starts one
    STARTING = "starting"
    RUNNING = "running"
    DOWN = "down"  # exited or could not start: another is started after RESTART_SECONDS
    CLOSING = "closing"
    CLOSED = "closed"


class Courier:
    def __init__(self, config: Config) -> None:
        self.cfg = config.capture
        self.state = WorkerState.IDLE
        self._settings: dict[str, Any] = {
            "capture": asdict(config.capture),
            "database": asdict(config.database),
            "log_level": config.server.log_level,
            "json_logs": not config.server.debug,
        }
        self._proc: asyncio.subprocess.Process | None = None
        self._reports: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._lines: list[bytes] = []  # submitted, not yet written to the pipe
        self._unacked: dict[int, bytes] = {}  # written to the running worker, not yet acknowledged
        self._seq = 0  # the number of the last line written to the running worker
        self._flush_at: asyncio.TimerHandle | None = None
        self._reported: dict[str, int] = {}  # the running worker's last report
        self._before = Counters()  # earlier workers' totals, and this side's own (spooled, dropped)
        self._starter: asyncio.Task[None] | None = None

    def counts(self) -> dict[str, int]:
        """The capture counts for ``/metrics``: earlier workers', this side's, the running worker's."""
        out = {name: getattr(self._before, name) + self._reported.get(name, 0) for name in NAMES}
        out["queue"] = len(self._lines) + self._reported.get("queue", 0)
        return out

    # ---- the request side ----------------------------------------------------------------------

    def submit(self, line: bytes) -> None:
        self._lines.append(line)
        if self.state is WorkerState.IDLE:
            self.state = WorkerState.STARTING  # at once: the next submit must not start another
            self._starter = asyncio.create_task(self._start_worker())  # the first record: no cost before
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush)

    def _flush(self) -> None:
        self._flush_at = None
        if not self._lines:
            return
        proc = self._proc
        if self.state is WorkerState.STARTING:
            self._hold()  # a worker is on its way (and may be reading the spool already)
            return
        if (
            self.state is not WorkerState.RUNNING
            or proc is None
            or proc.returncode is not None
            or proc.stdin is None
            or proc.stdin.is_closing()
        ):
            self._spool(self._lines)  # no worker to read them: the next one replays the spool
            self._lines = []
            return
        transport = proc.stdin.transport
        if isinstance(transport, asyncio.WriteTransport) and transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            self._hold()  # the worker is not reading: keep them (bounded), try again shortly
            return
        self._send(proc, self._lines)
        self._lines = []

    def _send(self, proc: asyncio.subprocess.Process, lines: list[bytes]) -> None:
        """Number the lines, keep them until acknowledged, write them to the worker in one write."""
        assert proc.stdin is not None
        out = []
        for line in lines:
            self._seq += 1
            self._unacked[self._seq] = line
            out.append(b"%d %b" % (self._seq, line))
        proc.stdin.write(b"\n".join(out) + b"\n")

    def _acknowledged(self, acked: int) -> None:
        while self._unacked:
            first = next(iter(self._unacked))
            if first > acked:
                return
            del self._unacked[first]

    def _take_unacked(self) -> list[bytes]:
        lines = list(self._unacked.values())
        self._unacked.clear()
        return lines

    def _hold(self) -> None:
        """Keep the lines (up to ``queue_size``) and try again shortly."""
        excess = len(self._lines) - self.cfg.queue_size
        if excess > 0:
            self._before.dropped += excess
            _log.error("capture writer process is not reading: records dropped", dropped=excess)
            del self._lines[:excess]
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(RESTART_SECONDS / 10, self._flush)

    def _spool(self, lines: list[bytes]) -> None:
        """Only while no worker runs (the spool is the worker's file otherwise); blocking, rare."""
        kept = Spool(Path(self.cfg.spool_dir), self.cfg.spool_max_bytes).append(lines)
        self._before.spooled += kept
        if kept < len(lines):
            self._before.dropped += len(lines) - kept
            _log.error("capture spool full: records dropped", dropped=len(lines) - kept)

    # ---- the worker ----------------------------------------------------------------------------

    async def start(self) -> None:
        """The worker starts with the first record, or now when the spool holds records to replay."""
        if Spool(Path(self.cfg.spool_dir), self.cfg.spool_max_bytes).pending_bytes() > 0:
            _log.info("capture spool has records from an earlier run; starting the writer to replay them")
            self.state = WorkerState.STARTING
            self._starter = asyncio.create_task(self._start_worker())
            await self._starter

    async def _start_worker(self) -> None:
        try:
            await self._spawn()
        except OSError as exc:  # lines go to the spool meanwhile; the next record tries again
            _log.error("capture writer process could not start", error=str(exc))
            await asyncio.sleep(RESTART_SECONDS)
            self._starter = None
            if self.state is WorkerState.DOWN:
                self.state = WorkerState.IDLE
            return
        self._supervisor = asyncio.create_task(self._supervise(), name="gwproxy-capture-courier")
        self._flush()

    async def _spawn(self) -> None:
        if self.state is not WorkerState.CLOSING:
            self.state = WorkerState.STARTING
        read_fd, write_fd = os.pipe()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gwproxy.capture.process.worker",
                stdin=asyncio.subprocess.PIPE, pass_fds=(write_fd,), start_new_session=True,
            )  # fmt: skip
        except BaseException:
            os.close(read_fd)
            self.state = WorkerState.CLOSING if self.state is WorkerState.CLOSING else WorkerState.DOWN
            raise
        finally:
            os.close(write_fd)
        assert self._proc.stdin is not None
        self._proc.stdin.write(orjson.dumps({**self._settings, "report_fd": write_fd}) + b"\n")
        self._reported = {}
        self._seq = 0
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
        self._reports = asyncio.create_task(self._read_reports(reader))
        if self.state is WorkerState.STARTING:
            self.state = WorkerState.RUNNING
        _log.info("capture writer process started", pid=self._proc.pid)

    async def _read_reports(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            with contextlib.suppress(orjson.JSONDecodeError):
                self._reported = orjson.loads(line)
                self._acknowledged(self._reported.pop("acked", 0))

    async def _supervise(self) -> None:
        while True:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._reports is not None:
                await self._reports  # its last report, if it made one
                self._reports = None
            if self.state is WorkerState.CLOSING:
                return
            self.state = WorkerState.DOWN
            resend = self._take_unacked()
            _log.error(
                "capture writer process exited; starting another, which gets the records it had not "
                "confirmed first", exit_code=code, resent=len(resend),
            )  # fmt: skip
            self._lines[:0] = resend
            for name in NAMES:
                setattr(self._before, name, getattr(self._before, name) + self._reported.get(name, 0))
            self._reported = {}
            await asyncio.sleep(RESTART_SECONDS)
            self._flush()  # spools what came meanwhile, before the next worker reads the spool
            try:
                await self._spawn()
            except OSError as exc:  # tried again after RESTART_SECONDS; records go to the spool
                _log.error("capture writer process could not start", error=str(exc))
                continue
            self._flush()

    async def close(self) -> None:
        """Hand over what is left, close the worker's input and wait for it to drain and exit."""
        self.state = WorkerState.CLOSING
        if self._starter is not None:
            with contextlib.suppress(Exception):
                await self._starter
        if self._flush_at is not None:
            self._flush_at.cancel()
        self._flush_at = None
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            if self._lines:
                self._send(proc, self._lines)
                self._lines = []
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), self.cfg.write_timeout * 4 + 10)
            except TimeoutError:
                _log.error("capture writer process did not finish draining; killed", pid=proc.pid)
                proc.kill()
                await proc.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._reports is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reports, 2)
        self._lines[:0] = self._take_unacked()  # not confirmed by its last report: keep them (once, by id)
        if self._lines:
            self._spool(self._lines)
            self._lines = []
        self.state = WorkerState.CLOSED


@asynccontextmanager
async def open_capture(config: Config, engine: AsyncEngine, metrics: Metrics) -> AsyncIterator[RecordSink]:
    """Where captured records go: the writer in its own process (``capture.process``, the default)
    through a courier, or the writer in this event loop. Its counts are read by ``/metrics``."""
    if config.capture.process:
        courier = Courier(config)
        metrics.capture = courier.counts
        await courier.start()
        try:
            yield courier
        finally:
            await courier.close()
        return
    writer = CaptureWriter(config.capture, engine)
    metrics.capture = writer.counters.snapshot
    writer.start()
    try:
        yield writer
    finally:
        await writer.close()
