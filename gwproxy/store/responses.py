"""Responses: the ``stored_responses`` rows — who made each ``/v1/responses`` id the gateway relayed
and which upstream holds it (``proxy.stored`` says why) — with a bounded cache in front.

A row never changes once written (an id is minted upstream from the gateway's own random request
id), so a found row is cached for good, least recently used forgotten first; a miss is not cached
(the id may be recorded by another replica a moment later). A record that is already there (the
same id relayed twice) is left as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy.store.tables import stored_responses

CACHED = 100_000  # response ids kept in memory with their owner and upstream


class ResponseRecords:
    def __init__(self, engine: AsyncEngine, cached: int = CACHED) -> None:
        self.engine = engine
        self.cached = cached
        self._cache: OrderedDict[str, tuple[int | None, str]] = OrderedDict()

    async def record(self, response_id: str, user_id: int | None, upstream: str) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    stored_responses.insert().values(
                        id=response_id, user_id=user_id, upstream=upstream, created_at=datetime.now(UTC)
                    )
                )
        except IntegrityError:  # recorded already: the first record stands
            return
        self._remember(response_id, (user_id, upstream))

    async def holder(self, response_id: str) -> tuple[int | None, str] | None:
        found = self._cache.get(response_id)
        if found is not None:
            self._cache.move_to_end(response_id)
            return found
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(stored_responses.c.user_id, stored_responses.c.upstream).where(
                        stored_responses.c.id == response_id
                    )
                )
            ).first()
        if row is None:
            return None
        found = (row.user_id, row.upstream)
        self._remember(response_id, found)
        return found

    def _remember(self, response_id: str, found: tuple[int | None, str]) -> None:
        self._cache[response_id] = found
        self._cache.move_to_end(response_id)
        while len(self._cache) > self.cached:
            self._cache.popitem(last=False)
