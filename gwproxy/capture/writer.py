"""Writer: the single owner of the capture queue, the batch writes and the disk spool. It runs
in the writer process (``worker``, fed by the gateway's ``courier``), or in the gateway's event
loop with ``capture.process = false``.

Requests hand records to ``submit`` as wire lines (never blocks, never raises): decoded into a
bounded queue, or, when the queue is full, straight to the spool. One background task takes
batches (``batch_size`` records, or whatever arrived within ``batch_seconds``), parses each
response (``assembly``) and writes the batch in one transaction. If the database is down or
slower than ``write_timeout`` the batch goes to the spool, and so does everything after it until
the spool has been replayed — in order — which is retried every ``retry_seconds``. A record the
database refuses on its own (the batch fails, the database answers, the record fails alone) is
set aside in ``rejected.jsonl`` and logged, and so is a line that is not a record (from another
version). On shutdown the queue is drained: written if the database answers, spooled otherwise.
Dropping happens only when the spool's ``max_bytes`` is reached, and is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy import log
from gwproxy.capture.assembly import Assembled, assemble
from gwproxy.capture.batch import write_batch
from gwproxy.capture.counters import Counters
from gwproxy.capture.record import RESPONSES_ROUTE, Record
from gwproxy.capture.responses import assemble_response
from gwproxy.capture.spool import Spool
from gwproxy.config import CaptureConfig

_log = log.get("gwproxy.capture")


def reply_of(record: Record) -> Assembled:
    """The assistant message a captured response carried."""
    body = record.response.encode()
    if record.route == RESPONSES_ROUTE:
        return assemble_response(body, sse=record.sse)
    return assemble(body, sse=record.sse, chat=record.route != "/v1/completions")


class CaptureWriter:
    def __init__(self, cfg: CaptureConfig, engine: AsyncEngine, counters: Counters | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.counters = counters or Counters()
        self.queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=cfg.queue_size)
        self.spool = Spool(Path(cfg.spool_dir), cfg.spool_max_bytes)
        self._task: asyncio.Task[None] | None = None
        self._spooling = self.spool.pending_bytes() > 0  # left over from a previous run: replay first
        self._last_retry = 0.0
        self._inflight: list[Record] = []  # taken from the queue, not yet written or spooled
        self._idle = asyncio.Event()  # clear while writing, spooling or replaying: not to be cut half-way
        self._idle.set()
        self._full = asyncio.Event()  # set when a whole batch is queued
        self._closing = False
        self._seqs: dict[str, int] = {}  # request id → the courier's number for its line, until done
        self.confirm: Callable[[list[int]], None] | None = None  # told the numbers of lines written or spooled
        self.counters.queue = self.queue.qsize

    # ---- the request side ----------------------------------------------------------------------

    def submit(self, line: bytes, seq: int = 0) -> None:
        """Queue one wire line; ``seq`` (the courier's number for it, 0 for none) is passed to
        ``confirm`` once the record is written, spooled or set aside — never before."""
        try:
            record = Record.loads(line)
        except (ValueError, TypeError) as exc:  # orjson's decode error is a ValueError
            self._set_aside(line, None, exc)
            if seq and self.confirm is not None:
                self.confirm([seq])
            return
        if seq:
            self._seqs[record.request_id] = seq
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            spooled = asyncio.get_running_loop().run_in_executor(None, self._spool_now, [record])
            spooled.add_done_callback(lambda _: self._done([record]))
        if self.queue.qsize() >= self.cfg.batch_size - 1 and not self._full.is_set():
            self._full.set()  # the writer's wait for a batch is over: the one it holds + these

    # ---- the writer task -----------------------------------------------------------------------

    def start(self) -> None:
        if self._spooling:
            _log.info("capture spool has records from an earlier run; replaying", bytes=self.spool.pending_bytes())
        self._task = asyncio.create_task(self._run(), name="gwproxy-capture-writer")

    async def close(self) -> None:
        """Stop the task, then drain: write what is queued, spool what cannot be written."""
        self._closing = True
        with contextlib.suppress(TimeoutError):  # let a write or spool in progress land
            await asyncio.wait_for(self._idle.wait(), self.cfg.write_timeout * 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left, self._inflight = self._inflight, []  # a write cut by the cancel: again (idempotent)
        while not self.queue.empty():
            left.append(self.queue.get_nowait())
        for start in range(0, len(left), self.cfg.batch_size):
            await self._write_or_spool(left[start : start + self.cfg.batch_size])
        if left:
            _log.info("capture queue drained", records=len(left), spooled_total=self.counters.spooled)

    async def _run(self) -> None:
        while True:
            self._inflight = []
            await self._collect(self._inflight)  # fills it in place: a cancel mid-way loses nothing
            if self._closing:
                return
            self._idle.clear()
            try:
                if self._inflight:
                    await self._write_or_spool(self._inflight)
                self._inflight = []
                if self._spooling and time.monotonic() - self._last_retry >= self.cfg.retry_seconds:
                    await self._replay()
            finally:
                self._idle.set()

    async def _collect(self, batch: list[Record]) -> None:
        """Wait for a record, then for ``batch_seconds`` or until a full batch is queued, then take
        up to ``batch_size``. One wake-up per batch, not one per record."""
        timeout = self.cfg.retry_seconds if self._spooling else None
        try:
            batch.append(await asyncio.wait_for(self.queue.get(), timeout))
        except TimeoutError:
            return
        size = self.cfg.batch_size
        if self.queue.qsize() + 1 < size and self.cfg.batch_seconds > 0:
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.batch_seconds):
                    await self._full.wait()
        while len(batch) < size and not self.queue.empty():
            batch.append(self.queue.get_nowait())

    async def _write_or_spool(self, batch: list[Record]) -> None:
        if not self._spooling:
            try:
                await asyncio.wait_for(self._write(batch), self.cfg.write_timeout)
                self._done(batch)
                return
            except Exception as exc:  # database down, slow, or refusing: keep the records on disk
                _log.warning("capture write failed, spooling", records=len(batch), error=f"{type(exc).__name__}: {exc}")
                self._spooling = True
                self._last_retry = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, self._spool_now, batch)
        self._done(batch)

    def _done(self, batch: Sequence[Record]) -> None:
        """Tell the courier these records are safe (written, or on disk in the spool)."""
        if self._seqs and self.confirm is not None:
            seqs = [seq for r in batch if (seq := self._seqs.pop(r.request_id, 0))]
            if seqs:
                self.confirm(seqs)

    def _spool_now(self, batch: Sequence[Record]) -> None:
        lines = [r.dumps() for r in batch]
        kept = self.spool.append(lines)
        self.counters.spooled += kept
        if kept < len(lines):
            self.counters.dropped += len(lines) - kept
            _log.error(
                "capture spool full: records dropped", dropped=len(lines) - kept, max_bytes=self.spool.max_bytes,
                request_ids=[r.request_id for r in batch[kept:]][:20],
            )  # fmt: skip
        self._spooling = True

    async def _write(self, batch: Sequence[Record]) -> int:
        """Write new records in one transaction; returns how many were new."""
        items = [(r, reply_of(r)) for r in batch]
        written = await write_batch(self.engine, items)
        self.counters.written += written
        return written

    async def _replay(self) -> None:
        self._last_retry = time.monotonic()
        loop = asyncio.get_running_loop()
        while not self._closing:
            lines, offset = await loop.run_in_executor(None, self.spool.read, self.cfg.batch_size)
            if not lines:
                await loop.run_in_executor(None, self.spool.commit, offset)
                if await loop.run_in_executor(None, self.spool.pending_bytes) == 0:
                    self._spooling = False
                    _log.info("capture spool replayed", replayed=self.counters.replayed)
                return
            records = [Record.loads(line) for line in lines]
            try:
                await asyncio.wait_for(self._write(records), self.cfg.write_timeout)
            except Exception as exc:
                if not await self._database_answers():
                    _log.info("capture database still unavailable", error=f"{type(exc).__name__}: {exc}")
                    return
                await self._write_one_by_one(records)
            self.counters.replayed += len(records)
            await loop.run_in_executor(None, self.spool.commit, offset)

    async def _database_answers(self) -> bool:
        try:
            async with asyncio.timeout(self.cfg.write_timeout):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def _write_one_by_one(self, records: list[Record]) -> None:
        for record in records:
            try:
                await self._write([record])
            except Exception as exc:
                self._set_aside(record.dumps(), record.request_id, exc)

    def _set_aside(self, line: bytes, request_id: str | None, exc: Exception) -> None:
        """Keep a record that cannot be written (refused, or unreadable) in ``rejected.jsonl``."""
        self.counters.rejected += 1
        what = "capture record refused by the database" if request_id else "capture line unreadable"
        _log.error(f"{what}, set aside", request_id=request_id, error=f"{type(exc).__name__}: {exc}")
        with (Path(self.cfg.spool_dir) / "rejected.jsonl").open("ab") as f:
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
