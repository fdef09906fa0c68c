"""Pure pieces of the hardening: log redaction, Markdown escaping, masked URLs, request-shape
rules, identifiers, NUL handling, and the Responses API in capture, usage and the simulator."""

from __future__ import annotations

import orjson
import pytest

from gwproxy.bodies import identifier, nul_at
from gwproxy.capture.record import Record, without_nul
from gwproxy.capture.responses import assemble_response, turn_messages
from gwproxy.config import Config, without_credentials
from gwproxy.conversations.routes import fenced, inline
from gwproxy.log import redact
from gwproxy.middlewares.shape import AUTH_MAX_BODY_BYTES, body_limit, has_dot_segment
from gwproxy.proxy.endpoints import lookup
from gwproxy.proxy.usage import UsageTap, parse_usage
from gwproxy.sim import engine, responses

KEY = "gwp-AbCdEfGh1234_secretpart-xyz"


@pytest.mark.parametrize(
    "text",
    [
        f"b'GET /v1 HTTP/1.1\\r\\nAuthorization: Bearer {KEY}\\r\\nHost: x\\r\\n'",
        f"GET /v1 HTTP/1.1\nauthorization: bearer {KEY}\n",
        f"{{'x-api-key': '{KEY}', 'host': 'x'}}",
        f"api-key={KEY}",
        f"cookie: session={KEY}; other=1",
        f"the key {KEY} was refused",
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
        "refresh gwr-0123456789abcdef0123 used twice",
    ],
)
def test_redact_hides_credentials_in_every_shape_seen(text: str) -> None:
    out = redact(text)
    assert "secretpart" not in out and "eyJzdWIiOiIxIn0" not in out and "0123456789abcdef" not in out
    assert "[REDACTED]" in out


def test_redact_masks_url_passwords_and_leaves_plain_text() -> None:
    assert redact("connect http://user:pa55@host:8000/v1 failed") == "connect http://***@host:8000/v1 failed"
    assert redact("postgresql://gw:pw@db/gw") == "postgresql://***@db/gw"
    assert redact("upstream 127.0.0.1:8000 refused (Connection refused)") == (
        "upstream 127.0.0.1:8000 refused (Connection refused)"
    )
    assert without_credentials("https://u:p@h:1/v1") == "https://***@h:1/v1"
    assert without_credentials("http://h:1/v1") == "http://h:1/v1"


def test_inline_and_fenced_markdown_cannot_make_structure() -> None:
    assert inline("## assistant <b>x</b>\n* item") == "\\#\\# assistant &lt;b&gt;x&lt;/b&gt; \\* item"
    fence = fenced("text\n````\n## heading\n```")
    assert fence[0] == "`````text" and fence[-1] == "`````"
    assert fenced("plain")[0] == "```text"


def test_shape_rules() -> None:
    cfg = Config()

    def limit(path: str) -> int:
        return body_limit(lookup(path), cfg)

    assert limit("/api/auth/login") == AUTH_MAX_BODY_BYTES
    assert limit("/api/admin/users") == cfg.server.api_max_body_bytes
    assert limit("/v1/chat/completions") == limit("/api/chat") == cfg.proxy.max_body_bytes
    assert limit("/tokenize") == limit("/v1/anything") == cfg.proxy.max_body_bytes
    assert has_dot_segment("/v1/../x") and has_dot_segment("/v1/./x") and has_dot_segment("/a/..")
    assert not has_dot_segment("/v1/models/a.b") and not has_dot_segment("/v1/...x")


def test_identifiers_are_ascii_digits_that_fit_a_bigint() -> None:
    assert identifier("42", "id") == 42
    for raw in ("²", "١٠", "-1", "1.0", "", " 1", "9" * 20, str(2**63)):
        assert identifier(raw, "id") is None, raw
    assert identifier(str(2**63 - 1), "id") == 2**63 - 1


def test_nul_is_found_with_its_path_and_read_as_a_replacement_character() -> None:
    assert nul_at({"a": [{"b": "x\x00"}]}) == "a[0].b"
    assert nul_at({"k\x00": 1}) == "k\x00"
    assert nul_at({"a": ["fine"], "n": 1}) is None
    assert without_nul({"m": ["a\x00b"]}) == {"m": ["a\ufffdb"]}
    line = orjson.dumps(
        {"request_id": "r", "user_id": 1, "key_id": None, "route": "/v1/chat/completions", "status": 200,
         "created_at": 0.0, "request": {"messages": [{"role": "user", "content": "x\x00y"}]}, "response": "",
         "sse": False, "truncated": False}
    )  # fmt: skip
    assert Record.loads(line).request["messages"][0]["content"] == "x\ufffdy"


def sim_response(body: dict[str, object], stream: bool) -> bytes:
    prompt, gen = responses.prepare(body)
    choice = engine.generate(gen, engine.parse_params(gen), len(engine.encode(prompt)), 4096, b"\x01" * 32)[0]
    tokens = len(engine.encode(prompt))
    if not stream:
        return orjson.dumps(responses.response("resp_1", 1, "m", body, choice, tokens))
    return b"".join(b"".join(step) for step in responses.stream("resp_1", 1, "m", body, choice, tokens))


def test_simulated_responses_have_vllms_shape() -> None:
    body = {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
            "instructions": "Be brief.", "max_output_tokens": 5}  # fmt: skip
    plain = orjson.loads(sim_response(body, stream=False))
    assert plain["object"] == "response" and plain["status"] == "incomplete"  # stopped at max_output_tokens
    assert plain["usage"]["output_tokens"] == 5 and plain["usage"]["input_tokens_details"]["cached_tokens"] == 0
    stream = sim_response(body, stream=True)
    events = [e for e in stream.split(b"\n\n") if e]
    kinds = [e.split(b"\n")[0].removeprefix(b"event: ").decode() for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]  # fmt: skip
    assert kinds.count("response.output_text.delta") == 5 and kinds[-1] == "response.completed"
    numbers = [orjson.loads(e.split(b"data: ", 1)[1])["sequence_number"] for e in events]
    assert numbers == list(range(len(events)))
    assert b"[DONE]" not in stream and b": " not in stream.replace(b"event: ", b"").replace(b"data: ", b"")
    with pytest.raises(engine.RequestError):
        responses.messages_of({"input": 3})


def test_responses_replies_are_assembled_plain_streamed_and_cut() -> None:
    body = {"model": "m", "input": "hello", "max_output_tokens": 4}
    plain = assemble_response(sim_response(body, stream=False), sse=False)
    streamed = assemble_response(sim_response(body, stream=True), sse=True)
    assert plain.content and plain.content == streamed.content and plain.usage == streamed.usage
    assert plain.finish_reason == "length" and plain.complete and streamed.complete
    cut = sim_response(body, stream=True)
    cut = cut[: cut.index(b"event: response.output_text.done")]
    partial = assemble_response(cut, sse=True)
    assert partial.content == plain.content and not partial.complete and partial.chunks == 4


def test_responses_requests_become_chat_messages() -> None:
    messages = turn_messages(
        {"instructions": "sys", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "c"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ]}
    )  # fmt: skip
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "assistant", "tool"]
    assert messages[1]["content"] == "ab" and messages[2]["content"] == "c"
    assert messages[3]["tool_calls"][0]["function"]["name"] == "f" and messages[4]["tool_call_id"] == "c1"
    assert turn_messages({"input": "x"}) == [{"role": "user", "content": "x"}]


def test_usage_of_the_responses_api_is_read_from_its_final_event() -> None:
    usage = (
        b'{"usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,'
        b'"output_tokens_details":{"reasoning_tokens":0},"total_tokens":10},"user":null}'
    )
    assert parse_usage(usage) == (7, 3)
    stream = sim_response({"model": "m", "input": "hello", "max_output_tokens": 3}, stream=True)
    tap = UsageTap(sse=True, strip=False, responses=True)
    sent = b"".join(tap.feed(stream[i : i + 100]) for i in range(0, len(stream), 100)) + tap.finish()
    assert sent == stream  # watched, never changed
    final = orjson.loads(stream.rsplit(b"data: ", 1)[1])["response"]["usage"]
    assert tap.usage == (final["input_tokens"], final["output_tokens"])
