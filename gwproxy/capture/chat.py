"""Chat: ``POST /api/chat``, the original gateway's chat endpoint, on top of the proxy.

``{"model": "current" | name, "messages": [...], "stream": bool, "conversation_id"?: id}``.
The reply is exactly what ``/v1/chat/completions`` answers (SSE when streaming), with the
conversation's id in ``X-Conversation-Id``. With a ``conversation_id`` the messages are appended
to that conversation: if they do not already start with its history (a client that sends only
the new turn), the history of its current branch is put in front before the request goes
upstream. Without one a new conversation is started. Limits and capture apply as on ``/v1``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from gwproxy.bodies import StrictBool, invalid, parse
from gwproxy.capture import batch, repository, threads
from gwproxy.errors import InvalidRequest
from gwproxy.keys import BODY, DATABASE, PRINCIPAL, RECORDER, RESPONSE_HEADERS, TRACE
from gwproxy.proxy.routes import through_gate


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


async def chat(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL]
    raw = await request.read()
    data = parse(raw) if raw else {}
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object")
    try:
        body: dict[str, Any] = ChatBody().load(data)
    except ValidationError as exc:
        raise invalid(exc.messages) from None
    cid = body.pop("conversation_id")
    messages = body["messages"]
    created = False
    if cid and principal.via != "anonymous":
        history = await _history(request, principal.user_id, cid)
        stored = set(threads.prefix_hashes(history))
        if history and threads.prefix_hashes(messages[:1])[0] not in stored:
            body["messages"] = history + messages  # the client sent only the new turn
    elif principal.via != "anonymous":
        cid, created = batch.new_id(), True
    recorder = request.get(RECORDER)
    if recorder is not None:
        recorder.conversation_id, recorder.create_conversation = cid, created
    if cid:  # echoed by the on_response_prepare hook with the rate-limit headers
        request[RESPONSE_HEADERS] = {**request.get(RESPONSE_HEADERS, {}), "X-Conversation-Id": cid}
    request[BODY] = body
    request[TRACE].route = "/api/chat"
    return await through_gate(request, orjson.dumps(body), "/v1/chat/completions")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/chat", chat)
