import orjson
import pytest

from gwproxy.sim import engine, wire
from gwproxy.sim.engine import Params, RequestError


def test_tokenizer_round_trips() -> None:
    for text in ["", "hello", "héllo wörld ✓", "a" * 33]:
        assert engine.decode(engine.encode(text)) == text
    assert len(engine.encode("abcdefgh")) == 2


def test_same_digest_same_output_and_different_requests_differ() -> None:
    d1 = engine.request_digest(7, {"r": '{"a":1}'})
    d2 = engine.request_digest(7, {"r": '{"a":2}'})
    a = engine.generate({}, Params(), 10, 4096, d1)
    b = engine.generate({}, Params(), 10, 4096, d1)
    c = engine.generate({}, Params(), 10, 4096, d2)
    assert a == b
    assert a != c
    assert engine.request_digest(None, {}) is None
    body = {"model": "m", "stream": True}
    same = {"stream": True, "model": "m", "stream_options": {"include_usage": True}}
    assert engine.request_digest(7, body) == engine.request_digest(7, same)


def test_max_tokens_gives_length_and_ignore_eos_fills_it() -> None:
    d = engine.request_digest(1, {"r": "x"})
    [c] = engine.generate({}, Params(max_tokens=3), 10, 4096, d)
    assert c.tokens == 3 and c.finish_reason == "length"
    [c] = engine.generate({}, Params(max_tokens=100, ignore_eos=True), 10, 4096, d)
    assert c.tokens == 100 and c.finish_reason == "length"
    [c] = engine.generate({}, Params(max_tokens=1000), 10, 4096, d)
    assert c.finish_reason == "stop" and 12 <= c.tokens <= 48


def test_stop_string_cuts_the_text() -> None:
    d = engine.request_digest(1, {"r": "x"})
    [full] = engine.generate({}, Params(max_tokens=40, ignore_eos=True), 10, 4096, d)
    word = full.pieces[5].strip()
    [cut] = engine.generate({}, Params(max_tokens=40, ignore_eos=True, stop=[word]), 10, 4096, d)
    assert cut.finish_reason == "stop" and cut.stop_reason == word
    assert word not in cut.text
    assert full.text.startswith(cut.text)


def test_n_choices_and_batched_prompts() -> None:
    choices = engine.generate({}, Params(n=2, max_tokens=4), 5, 4096, None, count=3)
    assert [c.index for c in choices] == list(range(6))


def test_context_overflow_is_a_400_in_vllm_words() -> None:
    """vLLM 0.32: max_tokens over max_model_len and a prompt over it are refused, naming the
    parameter; a prompt and max_tokens that only together pass it make what is left."""
    with pytest.raises(RequestError, match=r"max_tokens=120 cannot be greater than max_model_len=100\.") as over:
        engine.generate({}, Params(max_tokens=120), 10, 100, None)
    assert over.value.param == "max_tokens" and over.value.message.endswith("(parameter=max_tokens, value=120)")
    with pytest.raises(RequestError, match="your prompt contains at least 101 input tokens") as long:
        engine.generate({}, Params(), 150, 100, None)
    assert long.value.param == "input_tokens"
    [c] = engine.generate({"ignore_eos": True}, Params(max_tokens=20, ignore_eos=True), 90, 100, None)
    assert c.tokens == 10 and c.finish_reason == "length"


def test_tool_call_when_tools_given_and_text_after_the_tool_answers() -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
    body = {"tools": [tool], "messages": [{"role": "user", "content": "x"}]}
    [c] = engine.generate(body, Params(), 10, 4096, engine.request_digest(1, {"r": "t"}))
    assert c.finish_reason == "tool_calls" and c.tool_call is not None
    args = orjson.loads("".join(c.tool_call.arguments))
    assert set(args) == {"city", "days"} and isinstance(args["days"], int)
    body["messages"].append({"role": "tool", "content": "sunny", "tool_call_id": "1"})
    [c] = engine.generate(body, Params(), 10, 4096, None)
    assert c.tool_call is None and c.text
    with pytest.raises(RequestError):
        engine.generate(
            {**body, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            Params(),
            10,
            4096,
            None,
        )


def test_stream_steps_follow_vllm_framing() -> None:
    choices = engine.generate({}, Params(max_tokens=3), 7, 4096, engine.request_digest(1, {"r": "s"}))
    steps = list(wire.chat_stream("chatcmpl-1", 5, "m", choices, 7, include_usage=True))
    events = [e for step in steps for e in step]
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    first = orjson.loads(events[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = orjson.loads(events[-2][6:])
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 7,
        "total_tokens": 10,
        "completion_tokens": 3,
    }
    finish = orjson.loads(events[-3][6:])["choices"][0]
    assert finish["finish_reason"] == "length" and "stop_reason" in finish
    assert {orjson.loads(e[6:])["id"] for e in events[:-1]} == {"chatcmpl-1"}
    assert b" " not in events[1][6:].split(b'"content":')[0]  # compact JSON


def test_render_chat_rejects_malformed_messages() -> None:
    with pytest.raises(RequestError):
        engine.render_chat([])
    with pytest.raises(RequestError):
        engine.render_chat([{"content": "x"}])
    assert "<|user|>" in engine.render_chat(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]}]
    )
