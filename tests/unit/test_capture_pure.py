"""Assembly of captured responses, conversation threading hashes, and the spool file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gwproxy.capture.assembly import assemble
from gwproxy.capture.record import Record, Recorder, wire
from gwproxy.capture.spool import Spool
from gwproxy.capture.threads import chain, normalise, prefix_hashes, title_from


def sse(*events: dict | str) -> bytes:
    return b"".join(b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\n\n" for e in events)


def chunk(delta: dict, finish: str | None = None, index: int = 0) -> dict:
    return {"id": "c", "model": "m", "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def test_stream_with_reasoning_tool_calls_and_usage() -> None:
    body = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Think"}),
        chunk({"reasoning_content": "ing."}),
        chunk({"content": "Let me "}),
        chunk({"content": "check."}),
        chunk({"content": "other choice"}, index=1),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_", "arguments": ""}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": '{"city":'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "time", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}, finish="tool_calls"),
        {
            "id": "c",
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
        },
        "[DONE]",
    )
    out = assemble(body, sse=True, chat=True)
    assert out.complete and out.model == "m"
    assert out.content == "Let me check." and out.reasoning == "Thinking."
    assert out.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
    ]
    assert out.finish_reason == "tool_calls" and out.usage == (12, 9)
    assert out.message()["tool_calls"][0]["function"]["name"] == "get_weather"


def test_newer_vllm_reasoning_field_and_crlf() -> None:
    body = sse(chunk({"reasoning": "hm"}), chunk({"content": "ok"}, finish="stop"), "[DONE]").replace(b"\n", b"\r\n")
    out = assemble(body, sse=True, chat=True)
    assert (out.reasoning, out.content, out.finish_reason) == ("hm", "ok", "stop")


def test_a_stream_cut_short_keeps_what_arrived() -> None:
    body = sse(chunk({"content": "Hel"}), chunk({"content": "lo"}))
    body += b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" wor'  # torn by the capture bound
    out = assemble(body, sse=True, chat=True)
    assert (out.content, out.complete, out.finish_reason, out.usage, out.chunks) == ("Hello", False, None, None, 2)


def test_error_event_and_json_bodies() -> None:
    err = assemble(
        sse(chunk({"content": "a"}), {"error": {"message": "upstream died", "code": 502}}, "[DONE]"),
        sse=True,
        chat=True,
    )
    assert err.error == "upstream died" and err.content == "a"
    message = {"role": "assistant", "content": "hi", "reasoning_content": "r", "tool_calls": None}
    full = {
        "model": "m", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }  # fmt: skip
    out = assemble(orjson.dumps(full), sse=False, chat=True)
    assert (out.content, out.reasoning, out.tool_calls, out.usage, out.complete) == ("hi", "r", None, (3, 1), True)
    completion = {"model": "m", "choices": [{"index": 0, "text": "once upon", "finish_reason": "length"}]}
    assert assemble(orjson.dumps(completion), sse=False, chat=False).content == "once upon"
    streamed = sse(
        {"model": "m", "choices": [{"index": 0, "text": "a "}]}, {"model": "m", "choices": [{"index": 0, "text": "b"}]}
    )
    assert assemble(streamed, sse=True, chat=False).content == "a b"
    assert assemble(b"not json", sse=False, chat=True).complete is False
    assert assemble(b'{"error":{"message":"bad model"}}', sse=False, chat=True).error == "bad model"


def test_normalising_ignores_what_sdks_add_or_drop() -> None:
    stored = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}],
    }
    echoed = {
        "role": "assistant", "content": "", "refusal": None, "reasoning_content": "dropped by clients",
        "function_call": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }  # fmt: skip
    assert normalise(stored) == normalise(echoed)
    assert chain("", stored) == chain("", echoed)
    assert normalise({"role": "user", "content": "a"}) != normalise({"role": "user", "content": "b"})


def test_prefix_hashes_chain_and_branch() -> None:
    a = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "r1"}]
    b = [*a, {"role": "user", "content": "q2"}]
    edited = [a[0], {"role": "user", "content": "q1 (edited)"}]
    ha, hb, he = prefix_hashes(a), prefix_hashes(b), prefix_hashes(edited)
    assert hb[:3] == ha and len(set(hb)) == 4
    assert he[0] == ha[0] and he[1] != ha[1]  # the edit shares the system prefix only: a branch there
    assert prefix_hashes([{"role": "user", "content": "q1"}])[0] != ha[1]  # position matters


def test_titles() -> None:
    assert (
        title_from([{"role": "system", "content": "be nice"}, {"role": "user", "content": "  What is\n a  GPU?  "}])
        == "What is a GPU?"
    )
    long = title_from([{"role": "user", "content": "word " * 40}])
    assert len(long) == 80 and long.endswith("…")
    parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "data:..."}}]
    assert title_from([{"role": "user", "content": parts}]) == "Describe"
    assert title_from([]) == ""


def test_recorder_is_bounded() -> None:
    rec = Recorder(10)
    for piece in (b"abcd", b"efgh", b"ijkl", b"mnop"):
        rec.feed(piece)
    assert rec.body() == "abcdefghij" and rec.truncated and rec.size == 16


def _wire_line(body: bytes | None, **over: object) -> bytes:
    rec = Recorder(1 << 20)
    rec.feed(b'{"choices":[{"message":{"content":"hi\\n"}}]}')
    args: dict = dict(
        request_id="req-w", user_id=7, key_id=3, route="/v1/chat/completions", status=200, created_at=1.5,
        request=body, recorder=rec, conversation_id=None, prompt_tokens=4, completion_tokens=2,
        ttft_ms=12.345678, duration_ms=20.0000004,
    )  # fmt: skip
    args.update(over)
    return wire(**args)  # type: ignore[arg-type]


def test_wire_line_embeds_the_request_body_and_decodes_to_the_record() -> None:
    body = b'{\n  "model": "m",\n  "messages": [{"role": "user", "content": "a\\nb"}],\n  "tools": []\n}'
    line = _wire_line(body)
    assert b"\n" not in line  # one record, one line: the body's newlines were whitespace
    rec = Record.loads(line)
    assert rec.request == {"model": "m", "messages": [{"role": "user", "content": "a\nb"}]}  # no tools kept
    assert rec.model == "m" and rec.user_id == 7 and rec.key_id == 3 and rec.created_at == 1.5
    assert rec.response == '{"choices":[{"message":{"content":"hi\\n"}}]}' and not rec.sse and not rec.truncated
    assert (rec.ttft_ms, rec.duration_ms, rec.prompt_tokens, rec.completion_tokens) == (12.346, 20.0, 4, 2)
    assert Record.loads(rec.dumps()) == rec  # and the spool's form of it reads back the same


def test_wire_line_without_a_body_and_unreadable_lines() -> None:
    rec = Record.loads(_wire_line(None, status=429))
    assert rec.request == {} and rec.model is None and rec.status == 429
    bad_version = orjson.dumps([99, *orjson.loads(_wire_line(None))[1:]])
    for line in (b"[1,2]", bad_version, b'"text"', b"{not json"):
        with pytest.raises(ValueError):
            Record.loads(line)


def _record(i: int) -> Record:
    return Record(f"req-{i}", 1, None, "/v1/chat/completions", 200, 1.0, {"messages": []}, "", True, False)


def test_spool_appends_replays_in_order_and_truncates(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    assert spool.append([_record(i).dumps() for i in range(5)]) == 5
    lines, offset = spool.read(3)
    assert [Record.loads(x).request_id for x in lines] == ["req-0", "req-1", "req-2"]
    spool.commit(offset)
    again = Spool(tmp_path, max_bytes=10_000)  # a restart picks up where the last commit left off
    lines, offset = again.read(10)
    assert [Record.loads(x).request_id for x in lines] == ["req-3", "req-4"]
    again.commit(offset)
    assert again.pending_bytes() == 0 and (tmp_path / "spool.jsonl").stat().st_size == 0


def test_spool_cap_refuses_what_does_not_fit_and_ignores_a_torn_line(tmp_path: Path) -> None:
    line = _record(0).dumps()
    spool = Spool(tmp_path, max_bytes=len(line) * 2 + 2)
    assert spool.append([line, line, line]) == 2
    with (tmp_path / "spool.jsonl").open("ab") as f:
        f.write(b'{"request_id": "torn')  # a crash mid-write
    lines, _ = spool.read(10)
    assert len(lines) == 2
