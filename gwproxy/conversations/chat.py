"""Chat: ``POST /api/chat``, the original gateway's chat endpoint, on top of the proxy.

``{"model": "current" | name, "messages": [...], "stream": bool, "conversation_id"?: id}``.
The reply is exactly what ``/v1/chat/completions`` answers (SSE when streaming), with the
conversation's id in ``X-Conversation-Id``. With a ``conversation_id`` the messages are appended
to that conversation: if they do not already start with its history (a client that sends only
the new turn), the history of its current branch is put in front before the request goes
upstream. Without one a new conversation is started. Limits and capture apply as on ``/v1``.

Read-your-writes: the id handed out is usable at once. A new conversation's row is created
before the request goes upstream (the writer adds the turn to it later), so no replica answers
404 for it; and for ``RECENT_SECONDS`` after a turn this replica answers a continuation from
the branch it just served (what went upstream and the reply, ``RecentTurns``) instead of the
database, which has it only once the writer's batch is in. On another replica within that time a
continuation reads the database, which may not hold the last turn yet (send the whole history, or
keep a conversation on one replica, to be sure). While the database is away a new conversation
still starts (its row comes with the writer's spool replay).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from aiohttp import web
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from gwproxy import log
from gwproxy.bodies import StrictBool, invalid
from gwproxy.capture import batch, threads
from gwproxy.capture.assembly import assemble
from gwproxy.capture.record import Recorder
from gwproxy.conversations import repository
from gwproxy.keys import DATABASE, EXCHANGE, PRINCIPAL, RECENT_TURNS, RESPONSE_HEADERS
from gwproxy.operations import operation
from gwproxy.proxy.endpoints import TABLE
from gwproxy.proxy.routes import through_gate
from gwproxy.store.engine import database_away

_log = log.get("gwproxy.chat")

RECENT_SECONDS = 30.0  # longer than a batch plus a write timeout: by then the database has the turn
RECENT_MAX = 10_000  # conversations remembered (the oldest go first)


class RecentTurns:
    """The branch each conversation had after its last ``/api/chat`` turn here, for
    ``RECENT_SECONDS``: what the database will hold once the writer's batch is in."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.clock = clock
        self._branches: OrderedDict[str, tuple[int, float, list[dict[str, Any]]]] = OrderedDict()

    def put(self, cid: str, user_id: int, branch: list[dict[str, Any]]) -> None:
        self._branches[cid] = (user_id, self.clock() + RECENT_SECONDS, branch)
        self._branches.move_to_end(cid)
        while len(self._branches) > RECENT_MAX:
            self._branches.popitem(last=False)

    def get(self, cid: str, user_id: int) -> list[dict[str, Any]] | None:
        hit = self._branches.get(cid)
        if hit is None or hit[0] != user_id or hit[1] <= self.clock():
            return None
        return hit[2]


class ChatBody(Schema):
    class Meta:
        unknown = INCLUDE  # sampling parameters (temperature, max_tokens, tools …) pass through

    model = fields.String(load_default="current", validate=validate.Length(min=1))
    messages = fields.List(fields.Dict(), required=True, validate=validate.Length(min=1))
    stream = StrictBool(load_default=False)
    conversation_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))


async def _history(request: web.Request, user_id: int, cid: str) -> list[dict[str, Any]]:
    async with request.app[DATABASE].connect() as conn:
        await repository.get_conversation(conn, user_id, cid)  # 404 unless it is this user's
        stored = await repository.conversation_messages(conn, user_id, cid)
    branch = repository.current_branch(stored)
    keep = ("role", "content", "tool_calls", "tool_call_id", "name")
    return [{k: m[k] for k in keep if k in m and m[k] is not None} for m in branch]


@operation("Chat in a conversation (the /v1/chat/completions answer)", "conversations", body=ChatBody,
           answer="sse", errors=(400, 404, 429, 502, 503, 504))  # fmt: skip
async def chat(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL]
    exchange = request[EXCHANGE]
    data = await exchange.json(request, check=False) or {}  # parsed once; ChatBody checks it
    try:
        body: dict[str, Any] = ChatBody().load(data)
    except ValidationError as exc:
        raise invalid(exc.messages) from None
    cid = body.pop("conversation_id")
    messages = body["messages"]
    created = False
    row = False  # this request created the conversation's row
    recent = request.app[RECENT_TURNS]
    recorder = exchange.tee if isinstance(exchange.tee, Recorder) else None
    if cid and principal.via != "anonymous":
        history = recent.get(cid, principal.user_id) or await _history(request, principal.user_id, cid)
        stored = set(threads.prefix_hashes(history))
        if history and threads.prefix_hashes(messages[:1])[0] not in stored:
            body["messages"] = history + messages  # the client sent only the new turn
    elif principal.via != "anonymous":
        cid, created = batch.new_id(), True
        if recorder is not None:
            row = await _create(request, principal.user_id, cid, messages, body.get("model"))
    if recorder is not None:
        recorder.conversation_id, recorder.create_conversation = cid, created
    if cid:  # echoed by the on_response_prepare hook with the rate-limit headers
        request[RESPONSE_HEADERS] = {**request.get(RESPONSE_HEADERS, {}), "X-Conversation-Id": cid}
    exchange.body = body  # what goes upstream, to the endpoint /api/chat stands for
    try:
        response = await through_gate(request, exchange, TABLE[exchange.endpoint.forwards or "/v1/chat/completions"])
    except Exception:
        if row:  # refused (model loading, upstream down…): no turn will fill it
            await _discard(request, principal.user_id, cid)
        raise
    if row and response.status != 200:
        await _discard(request, principal.user_id, cid)
    if cid and recorder is not None and response.status == 200 and not recorder.truncated:
        reply = assemble(recorder.body().encode(), sse=recorder.sse, chat=True)
        if reply.complete:
            recent.put(cid, principal.user_id, [*body["messages"], reply.message()])
    return response


async def _create(request: web.Request, user_id: int, cid: str, messages: list[dict[str, Any]], model: Any) -> bool:
    """The new conversation's row, now, so that its id is known everywhere before the turn is
    written; while the database is away the writer creates it later (the record says so).
    Returns whether the row was made."""
    try:
        async with request.app[DATABASE].begin() as conn:
            await repository.create_conversation(
                conn, user_id, threads.title_from(messages), model if isinstance(model, str) else None, {}, cid
            )
    except Exception as exc:
        if not database_away(exc):
            raise
        _log.warning("conversation row deferred to the writer: database unavailable", conversation_id=cid)
        return False
    return True


async def _discard(request: web.Request, user_id: int, cid: str) -> None:
    """Remove the row ``_create`` made for a turn that failed (a failed turn stores no messages,
    and before this row existed it started no conversation either)."""
    try:
        async with request.app[DATABASE].begin() as conn:
            await repository.delete_conversation(conn, user_id, cid)
    except Exception as exc:  # best effort: an empty conversation is left, the answer stands
        _log.warning("empty conversation not removed", conversation_id=cid, error=f"{type(exc).__name__}: {exc}")


def add_routes(app: web.Application) -> None:
    app[RECENT_TURNS] = RecentTurns()
    app.router.add_post("/api/chat", chat)
