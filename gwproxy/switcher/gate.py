"""Gate: whether requests for the switched model may go upstream now, and how many are in flight.

Owned by the switcher, read by the proxy handler on every request, so the open case costs one
attribute read. It holds only what a switch changes (``covers``): requests naming one of the
switched model's served names — the model being replaced and the one coming up — or ``current``,
or no model at all (vLLM answers those with the model it serves). Requests for every other model
(one loaded on demand, another upstream's) pass, and are not counted: a switch neither waits for
their streams nor makes them wait. Three positions:

- open    — requests pass (the normal state);
- held    — a switch is under way: a request waits up to ``hold`` seconds for the gate to open,
            then gets 503 ``model_not_ready`` with ``Retry-After``;
- down    — no model is being brought up (a switch failed and so did its rollback): requests
            get that 503 at once instead of waiting for nothing.

``inflight`` counts the covered requests between ``enter``/``leave`` (the proxy's upstream
exchange, streams included); ``drained(timeout)`` lets the switcher wait for the old model's
streams to finish.
"""

from __future__ import annotations

import asyncio
import contextlib

from gwproxy.errors import ModelNotReady

CURRENT = "current"  # the alias of whatever model the switcher serves


class Gate:
    __slots__ = ("_down", "_idle", "_opened", "inflight", "is_open", "names", "reason", "retry_after")

    def __init__(self, retry_after: int = 10) -> None:
        self.is_open = True
        self.names: frozenset[str] = frozenset()  # the switched model's served names (old and new while held)
        self.inflight = 0
        self.reason = ""
        self.retry_after = retry_after
        self._opened = asyncio.Event()
        self._opened.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._down = False

    def covers(self, model: str | None) -> bool:
        """Whether a request naming ``model`` (None: none) is the switched model's business."""
        return model is None or model == CURRENT or model in self.names

    def hold(self, reason: str, names: frozenset[str] = frozenset()) -> None:
        """Make new requests for the switched model wait (a switch started); ``names`` joins the
        names it holds (the model coming up)."""
        self.names = self.names | names
        self.is_open = False
        self._down = False
        self.reason = reason
        self._opened.clear()

    def down(self, reason: str) -> None:
        """Refuse new requests for the switched model at once, and wake those waiting so they are
        refused too."""
        self.is_open = False
        self._down = True
        self.reason = reason
        self._opened.set()  # waiters wake, see the gate down, and fail

    def open(self, names: frozenset[str] | None = None) -> None:
        """Let requests pass; ``names``: the served names of the model now switched in."""
        if names is not None:
            self.names = names
        self.is_open = True
        self._down = False
        self.reason = ""
        self._opened.set()

    async def wait(self, hold: float) -> None:
        """Called only when ``is_open`` is false: wait for it to open, or raise the 503."""
        if not self._down:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._opened.wait(), hold)
        if not self.is_open:
            raise ModelNotReady(
                f"The model is not available right now: {self.reason}. Retry shortly.",
                retry_after=self.retry_after,
            )

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def drained(self, within: float) -> bool:
        """Wait until no request is in flight; False if ``within`` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True
