"""Watchdog: one task that enforces the upstream timeouts of every request in flight.

A request registers a ``Watch`` while it waits for the upstream's response headers (limit: the
first-byte timeout) and keeps it, with ``follow``, while it relays the body: until the body's
first chunk the limit stays the first-byte timeout (vLLM sends a stream's headers at once and its
first event after queueing and prefill, which may take as long as a non-streamed answer's
headers), then the relay's ``first_chunk`` switches it to the idle timeout, the longest silence
allowed between chunks. The relay stamps ``Watch.last`` after each chunk — one float store, where a timer per
read would cost a timer-heap insert and removal per chunk. Every ``interval`` seconds the watchdog
expires the watches silent for longer than their limit: a request still waiting for headers is
cancelled (``expired`` tells the handler it was the watchdog), a body read is failed with
``UpstreamIdle``. Timeouts therefore fire between ``limit`` and ``limit + interval``.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp


class UpstreamIdle(Exception):
    """The upstream sent nothing for longer than the idle timeout."""


class Watch:
    __slots__ = ("expired", "idle", "last", "limit", "response", "task")

    def __init__(self, task: asyncio.Task[object] | None, limit: float) -> None:
        self.task = task
        self.limit = limit
        self.idle = limit
        self.response: aiohttp.ClientResponse | None = None
        self.last = time.monotonic()
        self.expired = False

    def follow(self, response: aiohttp.ClientResponse, idle: float) -> None:
        """From now on watch ``response``'s body: its first chunk within the limit already set
        (the first-byte timeout), each later one within ``idle`` of the one before."""
        self.response = response
        self.idle = idle
        self.last = time.monotonic()

    def first_chunk(self) -> None:
        """The body's first chunk arrived: silences are measured against ``idle`` from now on."""
        self.limit = self.idle


class Watchdog:
    def __init__(self, *limits: float) -> None:
        self.interval = min(1.0, *(limit / 4 for limit in limits))
        self._watches: set[Watch] = set()

    def watch(self, task: asyncio.Task[object] | None, limit: float) -> Watch:
        w = Watch(task, limit)
        self._watches.add(w)
        return w

    def release(self, w: Watch) -> None:
        self._watches.discard(w)

    def sweep(self, now: float) -> int:
        """Expire every watch silent for longer than its limit; return how many."""
        expired = [w for w in self._watches if now - w.last > w.limit]
        for w in expired:
            self._watches.discard(w)
            w.expired = True
            if w.response is not None:
                w.response.content.set_exception(UpstreamIdle(f"no data for {w.limit:g}s"))
            elif w.task is not None:
                w.task.cancel()
        return len(expired)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sweep(time.monotonic())
