"""Capture end to end: a gateway process, the openai SDK as the client, the conversation API
reading back what was stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from openai import OpenAI

from tests.conftest import MODEL, gwproxy_cli, provision
from tests.support.procs import Proc, start_gateway

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclass
class Stack:
    proc: Proc
    base: str
    admin: dict[str, str]
    alice: dict[str, str]
    bob: dict[str, str]
    env: dict[str, str]

    def sdk(self, who: dict[str, str]) -> OpenAI:
        return OpenAI(base_url=f"{self.base}/v1", api_key=who["Authorization"].split()[1], max_retries=0)


def _user_key(env: dict[str, str], name: str) -> dict[str, str]:
    gwproxy_cli(env, "user", "add", name, "--password-stdin", stdin=f"{name}-password-1\n")
    return {"Authorization": "Bearer " + gwproxy_cli(env, "key", "create", "--user", name).strip()}


def _stack(log_dir: Path, upstream: int, tmp: Path, name: str) -> Stack:
    env, key = provision(tmp)
    alice, bob = _user_key(env, "alice"), _user_key(env, "bob")
    proc, port = start_gateway(
        log_dir, upstream, name=name,
        env={**env, "GWPROXY_CAPTURE_SPOOL_DIR": str(tmp / "spool"), "GWPROXY_CAPTURE_BATCH_SECONDS": "0.02",
             "GWPROXY_RATELIMIT_ENABLED": "false"},
    )  # fmt: skip
    return Stack(proc, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}, alice, bob, env)


@pytest.fixture(scope="module")
def stack(log_dir: Path, sim: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    made = _stack(log_dir, sim, tmp_path_factory.mktemp("capture"), "gw-capture")
    yield made
    made.proc.stop()


@pytest.fixture(scope="module")
def paced_stack(log_dir: Path, paced_sim: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """In front of the simulator that takes 40 ms a token: a client can leave mid-stream."""
    made = _stack(log_dir, paced_sim, tmp_path_factory.mktemp("capture-paced"), "gw-capture-paced")
    yield made
    made.proc.stop()


def api(stack: Stack, who: dict[str, str], method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{stack.base}{path}", headers={**who, **kw.pop("headers", {})}, timeout=30, **kw)


def wait_requests(stack: Stack, who: dict[str, str], count: int, timeout: float = 15) -> dict[str, Any]:
    """Capture is asynchronous: poll /api/usage until ``count`` requests are recorded."""
    deadline = time.monotonic() + timeout
    while True:
        usage = api(stack, who, "GET", "/api/usage").json()
        if usage["total"]["requests"] >= count or time.monotonic() > deadline:
            assert usage["total"]["requests"] == count, usage
            return usage
        time.sleep(0.05)


def conversations(stack: Stack, who: dict[str, str]) -> list[dict[str, Any]]:
    return api(stack, who, "GET", "/api/conversations?limit=100").json()["data"]


def full(stack: Stack, who: dict[str, str], cid: str) -> dict[str, Any]:
    r = api(stack, who, "GET", f"/api/conversations/{cid}")
    assert r.status_code == 200, r.text
    return r.json()


def test_an_agent_resending_its_history_is_one_conversation_each_turn_stored_once(stack: Stack) -> None:
    who = _user_key(stack.env, "agent")
    client = stack.sdk(who)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "What's the weather in Oslo?"},
    ]
    first = client.chat.completions.create(model="current", messages=messages, tools=[WEATHER], seed=1)  # type: ignore[arg-type]
    call = first.choices[0].message
    assert call.tool_calls
    messages.append(call.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": '{"temp": 3}'})
    second = client.chat.completions.create(model="current", messages=messages, tools=[WEATHER])  # type: ignore[arg-type]
    messages.append({"role": "assistant", "content": second.choices[0].message.content})
    messages.append({"role": "user", "content": "And tomorrow?"})
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="current", messages=messages, stream=True)  # type: ignore[arg-type]
        if c.choices
    )
    usage = wait_requests(stack, who, 3)
    assert usage["total"]["completion_tokens"] > 0 and usage["data"][0]["model"] == MODEL

    (conv,) = conversations(stack, who)
    assert conv["title"] == "What's the weather in Oslo?" and conv["model"] == MODEL
    stored = full(stack, who, conv["id"])
    roles = [m["role"] for m in stored["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user", "assistant"]
    assert stored["branch"] == [m["id"] for m in stored["messages"]]  # one straight line
    by_role = stored["messages"]
    assert by_role[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert by_role[2]["finish_reason"] == "tool_calls"
    assert by_role[3]["tool_call_id"] == call.tool_calls[0].id
    assert by_role[4]["content"] == second.choices[0].message.content
    assert by_role[6]["content"] == streamed and by_role[6]["tokens"] > 0
    parents = [m["parent_id"] for m in stored["messages"]]
    assert parents == [None, *[m["id"] for m in stored["messages"][:-1]]]


def test_editing_an_earlier_message_branches_instead_of_overwriting(stack: Stack) -> None:
    who = _user_key(stack.env, "editor")
    client = stack.sdk(who)
    system = {"role": "system", "content": "Be brief."}
    history: list[dict[str, Any]] = [system, {"role": "user", "content": "Name a colour"}]
    first = client.chat.completions.create(model="current", messages=history)  # type: ignore[arg-type]
    history.append({"role": "assistant", "content": first.choices[0].message.content})
    client.chat.completions.create(model="current", messages=[*history, {"role": "user", "content": "Another"}])  # type: ignore[arg-type]
    # The user edits their second message: the UI resends the history up to it, and the new text.
    client.chat.completions.create(model="current", messages=[*history, {"role": "user", "content": "A fruit?"}])  # type: ignore[arg-type]
    # Same system prompt, new first message: a new conversation, not a branch of the first.
    client.chat.completions.create(model="current", messages=[system, {"role": "user", "content": "Name a city"}])
    wait_requests(stack, who, 4)
    older, newer = sorted(conversations(stack, who), key=lambda c: c["created_at"])
    assert (older["title"], newer["title"]) == ("Name a colour", "Name a city")
    stored = full(stack, who, older["id"])
    assert [m["role"] for m in stored["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    reply_id = stored["messages"][2]["id"]
    edits = [m for m in stored["messages"] if m["role"] == "user" and m["parent_id"] == reply_id]
    assert [m["content"] for m in edits] == ["Another", "A fruit?"]  # two branches after the first reply
    assert [m["content"] for m in stored["messages"] if m["id"] in stored["branch"]][-2] == "A fruit?"  # the latest


def test_conversation_header_capture_off_and_per_user_off(stack: Stack) -> None:
    who = _user_key(stack.env, "header")
    created = api(stack, who, "POST", "/api/conversations", json={"title": "Planning", "metadata": {"project": "x"}})
    assert created.status_code == 201
    cid = created.json()["id"]
    client = stack.sdk(who)
    client.chat.completions.create(
        model="current", messages=[{"role": "user", "content": "hi"}], extra_headers={"X-Conversation-Id": cid}
    )
    client.chat.completions.create(
        model="current", messages=[{"role": "user", "content": "secret"}], extra_headers={"X-Gwproxy-Capture": "off"}
    )
    wait_requests(stack, who, 1)
    stored = full(stack, who, cid)
    assert stored["title"] == "Planning" and stored["metadata"] == {"project": "x"}
    assert stored["messages"][0]["content"] == "hi"
    assert len(conversations(stack, who)) == 1

    user_id = next(
        u["id"] for u in api(stack, stack.admin, "GET", "/api/admin/users").json()["data"] if u["username"] == "header"
    )
    assert (
        api(stack, stack.admin, "PATCH", f"/api/admin/users/{user_id}", json={"capture": False}).json()["capture"]
        is False
    )
    time.sleep(6)  # the principal cache (auth.key_cache_seconds) picks the change up
    client.chat.completions.create(model="current", messages=[{"role": "user", "content": "off for me"}])
    time.sleep(0.5)
    assert api(stack, who, "GET", "/api/usage").json()["total"]["requests"] == 1


def test_api_chat_streams_like_v1_and_appends_to_its_conversation(stack: Stack) -> None:
    who = _user_key(stack.env, "chatter")
    body = {"model": "current", "messages": [{"role": "user", "content": "Tell me a joke"}], "stream": True}
    with httpx.stream("POST", f"{stack.base}/api/chat", json=body, headers=who, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
        cid = r.headers["X-Conversation-Id"]
    assert text.rstrip().endswith("data: [DONE]") and '"object":"chat.completion.chunk"' in text
    assert '"usage"' not in text  # the gateway's own usage request is invisible
    wait_requests(stack, who, 1)
    # The follow-up sends only the new turn: the gateway puts the history in front.
    follow = {"messages": [{"role": "user", "content": "Another"}], "conversation_id": cid}
    r2 = api(stack, who, "POST", "/api/chat", json=follow)
    assert r2.status_code == 200 and r2.headers["X-Conversation-Id"] == cid
    assert r2.json()["usage"]["prompt_tokens"] > 4  # the history went upstream too
    wait_requests(stack, who, 2)
    stored = full(stack, who, cid)
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["title"] == "Tell me a joke"
    bad = api(stack, who, "POST", "/api/chat", json={"messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    missing = api(stack, who, "POST", "/api/chat", json={**follow, "conversation_id": "0" * 32})
    assert missing.status_code == 404


def test_a_request_refused_before_it_went_upstream_is_counted_under_the_model_it_named(stack: Stack) -> None:
    who = _user_key(stack.env, "refused")
    bad = api(stack, who, "POST", "/v1/chat/completions", json={"model": "current", "messages": "hi"})
    assert bad.status_code == 400
    usage = wait_requests(stack, who, 1)
    assert usage["total"]["failed"] == 1 and [row["model"] for row in usage["data"]] == ["current"]
    assert conversations(stack, who) == []


def test_models_nobody_serves_are_counted_as_other_as_the_dashboard_counts_them(stack: Stack) -> None:
    """Names nobody serves make one usage row, ``other`` (as the metrics and the Dashboard call
    it), not a row per name a client typed."""
    who = _user_key(stack.env, "typos")
    for name in ("no-such-model", "another-typo"):
        missing = api(stack, who, "POST", "/v1/chat/completions", json={"model": name, "messages": [
            {"role": "user", "content": "hi"}]})  # fmt: skip
        assert missing.status_code == 404
    usage = wait_requests(stack, who, 2)
    assert [(row["model"], row["requests"], row["failed"]) for row in usage["data"]] == [("other", 2, 2)]


def test_a_client_that_leaves_mid_stream_leaves_what_it_got(paced_stack: Stack) -> None:
    stack = paced_stack
    who = _user_key(stack.env, "leaver")

    async def leave() -> None:
        body = {"model": "current", "messages": [{"role": "user", "content": "long"}], "stream": True,
                "max_tokens": 100, "ignore_eos": True}  # fmt: skip
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{stack.base}/v1/chat/completions", json=body, headers=who) as r:
                for _ in range(6):  # three events (a line and a blank each), then hang up
                    await r.content.readline()

    asyncio.run(leave())
    wait_requests(stack, who, 1)
    (conv,) = conversations(stack, who)
    reply = full(stack, who, conv["id"])["messages"][-1]
    assert reply["role"] == "assistant" and "finish_reason" not in reply
    assert 0 < reply["tokens"] < 20 and reply["content"]


def test_nobody_reads_or_changes_another_users_conversations(stack: Stack) -> None:
    stack.sdk(stack.alice).chat.completions.create(model="current", messages=[{"role": "user", "content": "mine"}])
    wait_requests(stack, stack.alice, 1)
    (conv,) = conversations(stack, stack.alice)
    cid = conv["id"]
    for method, path, kw in (
        ("GET", f"/api/conversations/{cid}", {}),
        ("PATCH", f"/api/conversations/{cid}", {"json": {"title": "stolen"}}),
        ("DELETE", f"/api/conversations/{cid}", {}),
        ("GET", f"/api/conversations/{cid}/export", {}),
        ("GET", f"/api/conversations/{cid}/export?format=markdown", {}),
        ("POST", "/api/chat", {"json": {"messages": [{"role": "user", "content": "x"}], "conversation_id": cid}}),
    ):
        r = api(stack, stack.bob, method, path, **kw)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["type"] == "not_found_error"
    assert conversations(stack, stack.bob) == []
    # Naming Alice's conversation in a header does not put Bob's chat into it.
    stack.sdk(stack.bob).chat.completions.create(
        model="current", messages=[{"role": "user", "content": "bob's"}], extra_headers={"X-Conversation-Id": cid}
    )
    usage = wait_requests(stack, stack.bob, 2)  # the refused /api/chat is a request too
    assert usage["total"]["failed"] == 1
    assert full(stack, stack.alice, cid)["messages"][0]["content"] == "mine"
    assert len(full(stack, stack.alice, cid)["messages"]) == 2
    assert api(stack, stack.bob, "GET", "/api/usage?user_id=all").status_code == 403
    everyone = api(stack, stack.admin, "GET", "/api/usage?user_id=all").json()
    assert everyone["user_id"] == "all" and everyone["total"]["requests"] >= 2
    assert all("user_id" not in row for row in everyone["data"])  # summed over users
    assert api(stack, stack.bob, "GET", "/api/usage/users").status_code == 403
    per_user = api(stack, stack.admin, "GET", "/api/usage/users?limit=100").json()
    bobs = next(u for u in per_user["data"] if u["username"] == "bob")
    assert (bobs["requests"], bobs["failed"]) == (2, 1)
    mine = api(stack, stack.bob, "GET", "/api/usage?since=2026-01-01&until=2026-01-02").json()
    assert (mine["since"], mine["until"], mine["data"]) == ("2026-01-01", "2026-01-02", [])
    for query, param in (("since=2020-01-01&until=2026-01-01", "since"), ("since=2026-02-01&until=2026-01-01", "since"),
                         ("until=9999-12-31T12:00:00", "until")):  # fmt: skip
        r = api(stack, stack.bob, "GET", f"/api/usage?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)
    assert api(stack, stack.alice, "GET", f"/api/conversations/{cid}").json()["title"] == "mine"


def test_listing_paging_filters_patch_export_delete(stack: Stack) -> None:
    who = _user_key(stack.env, "lister")
    ids = []
    for i in range(5):
        r = api(
            stack, who, "POST", "/api/conversations", json={"title": f"topic {i}", "model": "m-a" if i % 2 else "m-b"}
        )
        ids.append(r.json()["id"])
        time.sleep(0.01)
    seen, cursor = [], None
    while True:
        page = api(
            stack, who, "GET", "/api/conversations", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == ids[::-1]  # newest first, each once
    assert [c["title"] for c in api(stack, who, "GET", "/api/conversations?model=m-a").json()["data"]] == [
        "topic 3",
        "topic 1",
    ]
    assert [c["title"] for c in api(stack, who, "GET", "/api/conversations?q=PIC 4").json()["data"]] == ["topic 4"]
    assert api(stack, who, "GET", "/api/conversations?cursor=garbage").status_code == 400
    assert api(stack, who, "GET", "/api/conversations?limit=0").status_code == 400
    assert api(stack, who, "GET", "/api/conversations?since=yesterday").status_code == 400
    patched = api(stack, who, "PATCH", f"/api/conversations/{ids[0]}", json={"title": "renamed", "metadata": {"a": 1}})
    assert patched.json()["title"] == "renamed" and patched.json()["metadata"] == {"a": 1}
    assert api(stack, who, "PATCH", f"/api/conversations/{ids[0]}", json={"owner": 1}).status_code == 400
    md = api(stack, who, "GET", f"/api/conversations/{ids[0]}/export?format=markdown")
    assert md.headers["content-type"].startswith("text/markdown") and md.text.startswith("# renamed")
    js = api(stack, who, "GET", f"/api/conversations/{ids[0]}/export")
    assert js.json()["id"] == ids[0] and "attachment" in js.headers["content-disposition"]
    assert api(stack, who, "GET", f"/api/conversations/{ids[0]}/export?format=pdf").status_code == 400
    assert api(stack, who, "DELETE", f"/api/conversations/{ids[0]}").status_code == 204
    assert api(stack, who, "GET", f"/api/conversations/{ids[0]}").status_code == 404
