"""Bucket: token-bucket arithmetic — pure, the clock passed in.

A bucket holds up to ``capacity`` tokens and refills at ``rate`` tokens per second. A request
takes ``cost`` tokens from every bucket it touches, or from none: ``take`` admits only when all
of them hold enough. A cost above a bucket's capacity is clamped to it (a request bigger than the
whole allowance waits for a full bucket rather than forever). A clock that goes backwards refills
nothing; a huge gap refills to capacity, never beyond. The Redis store runs the same arithmetic in
Lua (``redis_store.ADMIT``); a test holds the two to the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Limit:
    capacity: float
    rate: float  # tokens per second

    @classmethod
    def per_window(cls, amount: float, window: float) -> Limit:
        return cls(amount, amount / window)


class State(NamedTuple):
    tokens: float
    updated: float


class Reading(NamedTuple):
    """What one bucket looks like after a decision (for the x-ratelimit-* headers)."""

    limit: float
    remaining: float
    reset_after: float  # seconds until the bucket is full again


class Decision(NamedTuple):
    allowed: bool
    retry_after: float  # seconds until the request would be admitted (0 when allowed)
    readings: tuple[Reading, ...]


def level(state: State | None, limit: Limit, now: float) -> float:
    if state is None:
        return limit.capacity
    elapsed = now - state.updated
    tokens = state.tokens + elapsed * limit.rate if elapsed > 0 else state.tokens
    return tokens if tokens < limit.capacity else limit.capacity


def take(
    states: Sequence[State | None], limits: Sequence[Limit], costs: Sequence[float], now: float
) -> tuple[Decision, list[State]]:
    # Plain loops: this runs on every request, and comprehensions over zip() cost twice as much.
    n = len(limits)
    levels = [0.0] * n
    wanted = [0.0] * n
    allowed = True
    for i in range(n):
        lim = limits[i]
        lv = level(states[i], lim, now)
        cost = costs[i] if costs[i] < lim.capacity else lim.capacity
        levels[i], wanted[i] = lv, cost
        if lv < cost:
            allowed = False
    retry = 0.0
    for i in range(n):
        if allowed:
            levels[i] -= wanted[i]
        elif levels[i] < wanted[i]:
            rate = limits[i].rate
            wait = (wanted[i] - levels[i]) / rate if rate > 0 else math.inf
            if wait > retry:
                retry = wait
    readings = []
    for i in range(n):
        lim, lv = limits[i], levels[i]
        reset = (lim.capacity - lv) / lim.rate if lim.rate > 0 else 0.0
        readings.append(Reading(lim.capacity, lv if lv > 0 else 0.0, reset))
    return Decision(allowed, retry, tuple(readings)), [State(lv, now) for lv in levels]


def settle(state: State | None, limit: Limit, delta: float, now: float) -> State:
    """Charge ``delta`` more tokens (or refund, if negative) after the fact; the bucket may go into
    debt down to ``-capacity``, which later requests then wait out."""
    lv = level(state, limit, now) - delta
    return State(max(-limit.capacity, min(limit.capacity, lv)), now)
