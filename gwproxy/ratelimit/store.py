"""Store: where buckets and concurrency slots live — in this process (``MemoryStore``), the
embedded default, or in Redis (``redis_store.RedisStore``), shared by every replica.

A store answers two calls. ``admit`` checks and takes from all of a request's buckets at once and
claims a concurrency slot if the request has one; ``settle`` charges the difference between the
estimated and the real token usage and releases the slot, after the response. In Redis a slot is a
lease that expires unless renewed (``redis_store``), so a release that never arrives holds nobody
out for longer than one lease. The ``Ticket``
returned by ``admit`` says which store granted it, so a slot taken in memory during a Redis
outage is released in memory too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gwproxy.ratelimit.bucket import Decision, Limit, State, take
from gwproxy.ratelimit.bucket import settle as settle_bucket


@dataclass(frozen=True, slots=True)
class Slot:
    key: str
    limit: int


@dataclass(slots=True)
class Ticket:
    store: BucketStore
    slot: Slot | None
    lease: str = ""  # the Redis store's id of the slot's lease (renewed while the request runs)


class BucketStore(Protocol):
    async def admit(
        self, keys: Sequence[str], limits: Sequence[Limit], costs: Sequence[float], slot: Slot | None
    ) -> tuple[Decision, Ticket | None]: ...

    async def settle(self, ticket: Ticket, key: str | None, limit: Limit | None, delta: float) -> None: ...

    def settle_at_once(self, ticket: Ticket, key: str | None, limit: Limit | None, delta: float) -> bool:
        """Settle without waiting, if this store can (in memory); False: ``settle`` must be awaited."""
        ...


SLOT_FULL_RETRY = 1.0  # seconds a request refused for concurrency is told to wait


class MemoryStore:
    """Buckets in a dict: exact for one process, per process when there are several."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.buckets: dict[str, State] = {}
        self.slots: dict[str, int] = {}

    async def admit(
        self, keys: Sequence[str], limits: Sequence[Limit], costs: Sequence[float], slot: Slot | None
    ) -> tuple[Decision, Ticket | None]:
        now = self.clock()
        decision, states = take([self.buckets.get(k) for k in keys], limits, costs, now)
        if decision.allowed and slot is not None and self.slots.get(slot.key, 0) >= slot.limit:
            decision = Decision(False, SLOT_FULL_RETRY, decision.readings)
            return decision, None
        if not decision.allowed:
            return decision, None
        for k, s in zip(keys, states, strict=True):
            self.buckets[k] = s
        if slot is not None:
            self.slots[slot.key] = self.slots.get(slot.key, 0) + 1
        return decision, Ticket(self, slot)

    async def settle(self, ticket: Ticket, key: str | None, limit: Limit | None, delta: float) -> None:
        self.settle_at_once(ticket, key, limit, delta)

    def settle_at_once(self, ticket: Ticket, key: str | None, limit: Limit | None, delta: float) -> bool:
        """``settle`` without a coroutine: memory needs no waiting."""
        if key is not None and limit is not None and delta:
            self.buckets[key] = settle_bucket(self.buckets.get(key), limit, delta, self.clock())
        if ticket.slot is not None:
            left = self.slots.get(ticket.slot.key, 0) - 1
            if left > 0:
                self.slots[ticket.slot.key] = left
            else:
                self.slots.pop(ticket.slot.key, None)
        return True
