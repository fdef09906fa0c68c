"""Routes: ``/api/conversations`` (a user's own history) and ``/api/usage``.

- ``GET    /api/conversations``             own, newest first; ``limit``, ``cursor``, ``model``,
                                            ``since``/``until`` (ISO dates), ``q`` (title search)
- ``POST   /api/conversations``             ``{"title"?, "model"?, "metadata"?}`` → 201
- ``GET    /api/conversations/{id}``        with every message (``parent_id`` shows the branches)
                                            and ``branch``: the ids of the current branch
- ``PATCH  /api/conversations/{id}``        ``{"title"?, "metadata"?}``
- ``DELETE /api/conversations/{id}``        → 204
- ``GET    /api/conversations/{id}/export`` ``?format=json`` (default) or ``markdown``
- ``GET    /api/usage``                     tokens and requests by day and model; ``since``/``until``
                                            (UTC days, 30 by default, at most 400); admins may ask for
                                            ``user_id=N`` or ``user_id=all`` (summed over everyone)
- ``GET    /api/usage/users``               admins: each user's totals over the range, paged

Another user's conversation is answered 404, exactly like one that does not exist.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, fields, validate

from gwproxy.bodies import identifier, json, load
from gwproxy.capture.threads import text_of
from gwproxy.conversations import repository
from gwproxy.conversations import usage as usage_reads
from gwproxy.errors import Forbidden, InvalidRequest
from gwproxy.keys import DATABASE, PRINCIPAL
from gwproxy.operations import operation

MAX_PAGE = 100
RANGE = {"since": "ISO date, UTC (default: 30 days before until)", "until": "ISO date, exclusive (default: tomorrow)"}


class NewConversation(Schema):
    class Meta:
        unknown = RAISE

    title = fields.String(load_default="", validate=validate.Length(max=200))
    model = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    metadata = fields.Dict(keys=fields.String(), load_default=dict)


class ConversationChange(Schema):
    class Meta:
        unknown = RAISE

    title = fields.String(validate=validate.Length(max=200))
    metadata = fields.Dict(keys=fields.String())


def _user(request: web.Request) -> int:
    return request[PRINCIPAL].user_id


def _date(request: web.Request, name: str) -> datetime | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
        # In UTC, as stored; a time whose UTC is outside years 1-9999 cannot be compared.
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"'{name}' must be an ISO 8601 date or time within years 1-9999 UTC, got {value!r}", param=name
        ) from None


def _limit(request: web.Request) -> int:
    value = identifier(request.query.get("limit", "20"), "limit")
    if value is None or not 1 <= value <= MAX_PAGE:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_PAGE}", param="limit")
    return value


class Conversation(Schema):
    id = fields.String(required=True)
    title = fields.String(required=True)
    model = fields.String(required=True, allow_none=True)
    metadata = fields.Dict(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class ConversationFull(Conversation):
    messages = fields.List(
        fields.Dict(), required=True, metadata={"description": "every message; parent_id links branches"}
    )
    branch = fields.List(fields.String(), required=True, metadata={"description": "ids of the current branch"})


class ConversationPage(Schema):
    data = fields.List(fields.Nested(Conversation), required=True)
    next_cursor = fields.String(required=True, allow_none=True)
    has_more = fields.Boolean(required=True)


class Usage(Schema):
    user_id = fields.Raw(required=True, metadata={"description": "a user id, or 'all'"})
    since = fields.String(required=True, metadata={"description": "first day counted (UTC)"})
    until = fields.String(required=True, metadata={"description": "day after the last one counted"})
    data = fields.List(fields.Dict(), required=True, metadata={"description": "day, model and the counts"})
    total = fields.Dict(required=True)


class UsageByUser(Schema):
    since = fields.String(required=True)
    until = fields.String(required=True)
    data = fields.List(
        fields.Dict(), required=True, metadata={"description": "user_id, username and the counts, by user id"}
    )
    next_cursor = fields.String(required=True, allow_none=True)
    has_more = fields.Boolean(required=True)


@operation("Your conversations, newest first", "conversations", answer=ConversationPage, errors=(400,),
           query={"limit": "1 to 100 (default 20)", "cursor": "next_cursor of the previous page",
                  "model": "only this model", "since": "ISO date or time", "until": "ISO date or time",
                  "q": "text in the title (case-insensitive)"})  # fmt: skip
async def list_conversations(request: web.Request) -> web.Response:
    async with request.app[DATABASE].connect() as conn:
        page = await repository.list_conversations(
            conn, _user(request), limit=_limit(request), cursor=request.query.get("cursor") or None,
            model=request.query.get("model") or None, since=_date(request, "since"), until=_date(request, "until"),
            text=request.query.get("q") or None,
        )  # fmt: skip
    return json({"data": page.items, "next_cursor": page.next_cursor, "has_more": page.next_cursor is not None})


@operation("Start a conversation", "conversations", body=NewConversation, answer=Conversation, status=201,
           errors=(400,))  # fmt: skip
async def create_conversation(request: web.Request) -> web.Response:
    body = await load(request, NewConversation())
    async with request.app[DATABASE].begin() as conn:
        created = await repository.create_conversation(
            conn, _user(request), body["title"], body["model"], body["metadata"]
        )
    return json(created, status=201)


async def _full(request: web.Request) -> dict[str, Any]:
    cid = request.match_info["conversation_id"]
    async with request.app[DATABASE].connect() as conn:
        conversation = await repository.get_conversation(conn, _user(request), cid)
        stored = await repository.conversation_messages(conn, _user(request), cid)
    branch = repository.current_branch(stored)
    return {**conversation, "messages": stored, "branch": [m["id"] for m in branch]}


@operation("A conversation with every message", "conversations", answer=ConversationFull, errors=(404,))
async def get_conversation(request: web.Request) -> web.Response:
    return json(await _full(request))


@operation("Rename it or change its metadata", "conversations", body=ConversationChange, answer=Conversation,
           errors=(400, 404))  # fmt: skip
async def update_conversation(request: web.Request) -> web.Response:
    body = await load(request, ConversationChange())
    async with request.app[DATABASE].begin() as conn:
        updated = await repository.update_conversation(
            conn, _user(request), request.match_info["conversation_id"], body.get("title"), body.get("metadata")
        )
    return json(updated)


@operation("Delete a conversation", "conversations", status=204, errors=(404,))
async def delete_conversation(request: web.Request) -> web.Response:
    async with request.app[DATABASE].begin() as conn:
        await repository.delete_conversation(conn, _user(request), request.match_info["conversation_id"])
    return web.Response(status=204)


_INLINE_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def inline(text: str) -> str:
    """Text for one line of Markdown that renders as itself: no structure, no HTML, one line."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _INLINE_SPECIAL.sub(r"\\\1", text)


def fenced(text: str, info: str = "text") -> list[str]:
    """``text`` as a fenced block that no line of it can close: the fence is longer than the
    longest run of backticks inside, so headings, fences and HTML in it stay text."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, text, fence]


def markdown(conversation: dict[str, Any]) -> str:
    """The current branch as Markdown. Everything that came from a client or a model is escaped
    (titles, roles, names) or fenced (contents), so an export cannot forge its own structure."""
    by_id = {m["id"]: m for m in conversation["messages"]}
    lines = [f"# {inline(conversation['title']) or 'Conversation'}", ""]
    lines += [f"- id: {inline(conversation['id'])}", f"- model: {inline(conversation['model'] or '-')}",
              f"- created: {conversation['created_at'].isoformat()}", ""]  # fmt: skip
    for mid in conversation["branch"]:
        m = by_id[mid]
        lines += [f"## {inline(m['role'])}", ""]
        if m.get("reasoning_content"):
            lines += ["Reasoning:", "", *fenced(m["reasoning_content"]), ""]
        text = text_of(m["content"])
        if text:
            lines += [*fenced(text), ""]
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            arguments = fenced(str(fn.get("arguments", "")), "json")
            lines += [f"Tool call {inline(fn.get('name') or '')}:", "", *arguments, ""]
    return "\n".join(lines)


@operation("Export as JSON or Markdown", "conversations", errors=(400, 404),
           answer={"application/json": ConversationFull, "text/markdown": None},
           query={"format": "json (default) or markdown"})  # fmt: skip
async def export_conversation(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "markdown", "md"):
        raise InvalidRequest("'format' must be json or markdown", param="format")
    conversation = await _full(request)
    if fmt == "json":
        response = json(conversation)
        name = f"conversation-{conversation['id']}.json"
    else:
        response = web.Response(text=markdown(conversation), content_type="text/markdown")
        name = f"conversation-{conversation['id']}.md"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@operation("Requests and tokens by day and model", "conversations", answer=Usage, errors=(400, 403),
           query={**RANGE, "user_id": "admins: a user id, or 'all' (summed over every user)"})  # fmt: skip
async def usage(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    asked = request.query.get("user_id")
    user_id: int | None = principal.user_id
    if asked is not None and asked != str(principal.user_id):
        if not principal.is_admin:
            raise Forbidden("Only admins may see other users' usage")
        if asked == "all":
            user_id = None
        else:
            user_id = identifier(asked, "user_id")
            if user_id is None:
                raise InvalidRequest("'user_id' must be a user id or 'all'", param="user_id")
    window = _window(request)
    async with request.app[DATABASE].connect() as conn:
        rows = await usage_reads.by_day(conn, user_id, window)
    return json({"user_id": user_id if user_id is not None else "all", **window.public(), "data": rows,
                 "total": usage_reads.totals(rows)})  # fmt: skip


@operation("Each user's requests and tokens over a range, a page at a time (admins)", "conversations",
           answer=UsageByUser, errors=(400, 403),
           query={**RANGE, "limit": "1 to 100 (default 20)", "cursor": "next_cursor of the previous page"})  # fmt: skip
async def usage_by_user(request: web.Request) -> web.Response:
    if not request[PRINCIPAL].is_admin:
        raise Forbidden("Only admins may see other users' usage")
    window = _window(request)
    async with request.app[DATABASE].connect() as conn:
        page = await usage_reads.by_user(
            conn, window, limit=_limit(request), cursor=request.query.get("cursor") or None
        )
    return json({**window.public(), "data": page.items, "next_cursor": page.next_cursor,
                 "has_more": page.next_cursor is not None})  # fmt: skip


def _window(request: web.Request) -> usage_reads.Window:
    return usage_reads.Window.of(_date(request, "since"), _date(request, "until"))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/conversations", list_conversations)
    r.add_post("/api/conversations", create_conversation)
    r.add_get("/api/conversations/{conversation_id}", get_conversation)
    r.add_patch("/api/conversations/{conversation_id}", update_conversation)
    r.add_delete("/api/conversations/{conversation_id}", delete_conversation)
    r.add_get("/api/conversations/{conversation_id}/export", export_conversation)
    r.add_get("/api/usage", usage)
    r.add_get("/api/usage/users", usage_by_user)
