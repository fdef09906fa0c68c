"""Balancer: which replica of a model a request goes to.

The score of a replica is its ``Upstream.load``: the gateway's own requests in flight there, plus
vLLM's waiting queue and ``KV_LOAD`` × its KV cache use when scraped, plus ``STALE_LOAD`` when the
scraped figures are older than three scrape intervals; all divided by its weight. Ejected
replicas are left out unless every replica is ejected (then the request tries one anyway: a
refusal is what it would get otherwise).

A chat conversation sticks to a replica so that vLLM's prefix cache is reused: its key is a
digest of the messages up to and including the first user message (the same for every turn of
one conversation). The first turn goes to the least-loaded replica and is remembered (at most
``upstream.affinity_entries`` conversations, least recently used forgotten first); each later
turn (one whose messages hold an assistant reply) goes back there — unless that replica is gone
(ejected, or no longer serving the model: the conversation moves and sticks to its new replica)
or badly overloaded, more than twice the least-loaded replica's load plus ``SKEW_SLACK``
(then that one request goes to the least-loaded). Everything else goes to the least-loaded
replica, ties taken in turn. ``upstream.balance = "round_robin"`` weighs nothing: each replica in
turn (what the fleet bench compares the score with).

A request naming a stored ``/v1/responses`` answer goes to the upstream that made it, whatever
the load (``proxy.stored``), without asking the balancer.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from gwproxy.proxy.upstream import Upstream

SKEW_SLACK = 4.0


def conversation(body: dict[str, Any]) -> tuple[bytes, bool] | None:
    """(the conversation's key, whether this request continues it) for a chat body, else None."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    opening: list[Any] = []  # the system/developer messages and the first user message
    for m in messages:
        opening.append(m)
        if isinstance(m, dict) and m.get("role") == "user":
            break
    rest = messages[len(opening) :]
    continues = any(isinstance(m, dict) and m.get("role") == "assistant" for m in rest)
    try:
        raw = orjson.dumps(opening)
    except TypeError:
        return None
    return hashlib.blake2b(raw, digest_size=16).digest(), continues


class Balancer:
    def __init__(self, entries: int, round_robin: bool = False) -> None:
        self.entries = entries
        self.round_robin = round_robin  # upstream.balance = "round_robin": in turn, nothing weighed
        self._sticky: OrderedDict[bytes, str] = OrderedDict()
        self._turn = 0

    def pick(
        self,
        group: Sequence[Upstream],
        body: dict[str, Any] | None = None,
        tried: Upstream | None = None,
    ) -> Upstream | None:
        """The replica of ``group`` to send to (None when only ``tried`` was left)."""
        if tried is None and len(group) == 1:
            return group[0]
        live = [u for u in group if u is not tried and not u.ejected]
        if not live:
            live = [u for u in group if u is not tried]
            if not live:
                return None
        if self.round_robin:
            self._turn += 1
            return live[self._turn % len(live)]
        now = time.monotonic()
        loads = [u.load(now) for u in live]
        low = min(loads)
        found = conversation(body) if body is not None and self.entries else None
        if found is not None and found[1]:
            name = self._sticky.get(found[0])
            for u, load in zip(live, loads, strict=True):
                if u.name == name:
                    self._sticky.move_to_end(found[0])
                    if load <= 2 * low + SKEW_SLACK:
                        return u
                    return self._least(live, loads, low)  # badly skewed: this one request moves
        chosen = self._least(live, loads, low)
        if found is not None:
            self._remember(found[0], chosen.name)
        return chosen

    def _least(self, live: list[Upstream], loads: list[float], low: float) -> Upstream:
        ties = [u for u, load in zip(live, loads, strict=True) if load == low]
        self._turn += 1
        return ties[self._turn % len(ties)]

    def _remember(self, key: bytes, name: str) -> None:
        self._sticky[key] = name
        self._sticky.move_to_end(key)
        while len(self._sticky) > self.entries:
            self._sticky.popitem(last=False)

    def replica_of(self, body: dict[str, Any]) -> str | None:
        """The replica a conversation sticks to, if remembered (for tests and status)."""
        found = conversation(body)
        return self._sticky.get(found[0]) if found else None
