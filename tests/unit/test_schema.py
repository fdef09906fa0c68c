import pytest

from gwproxy.errors import InvalidRequest
from gwproxy.proxy.endpoints import lookup


def check(path: str, body: dict) -> None:  # type: ignore[type-arg]
    """The check the endpoint table gives ``path`` (none: anything passes)."""
    schema = lookup(path).schema
    if schema is not None:
        schema(body)


OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_valid_requests_and_unknown_fields_pass() -> None:
    check(
        "/v1/chat/completions",
        {**OK, "stream": True, "temperature": 0.7, "top_p": 1, "n": 2, "max_tokens": 5, "vendor_x": {"a": 1}},
    )
    check(
        "/v1/chat/completions",
        {**OK, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
    )
    check("/v1/chat/completions", {**OK, "messages": [{"role": "assistant", "content": None, "tool_calls": []}]})
    check("/v1/completions", {"model": "m", "prompt": "x"})
    check("/v1/embeddings", {"model": "m", "input": ["a"]})
    check("/v1/unchecked/route", {"anything": True})


@pytest.mark.parametrize(
    "body",
    [
        {"messages": OK["messages"]},  # vLLM answers with its served model
        {**OK, "max_tokens": 5.0, "n": 1.0},  # whole floats are integers to pydantic
        {**OK, "max_tokens": "5"},
        {**OK, "stream": "yes"},
        {**OK, "stream": 1},
        {**OK, "stream": "false"},
        {**OK, "temperature": 2.5},  # vLLM bounds temperature below only
        {**OK, "messages": [{"role": "user", "content": [{"image_url": {"url": "data:image/png;base64,AA"}}]}]},
    ],
)
def test_what_vllm_accepts_passes(body: dict[str, object]) -> None:
    check("/v1/chat/completions", body)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": 3, "messages": OK["messages"]}, "model"),
        ("/v1/chat/completions", {"model": "m"}, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"content": "x"}]}, "messages[0].role"),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [OK["messages"][0], {"role": "user", "content": 5}]},
            "messages[1].content",
        ),
        ("/v1/chat/completions", {**OK, "stream": "maybe"}, "stream"),
        ("/v1/chat/completions", {**OK, "stream": 2}, "stream"),
        ("/v1/chat/completions", {**OK, "temperature": -0.1}, "temperature"),
        ("/v1/chat/completions", {**OK, "top_p": 1.5}, "top_p"),
        ("/v1/chat/completions", {**OK, "max_tokens": 0}, "max_tokens"),
        ("/v1/chat/completions", {**OK, "max_tokens": 1.5}, "max_tokens"),
        ("/v1/chat/completions", {**OK, "n": 0}, "n"),
        ("/v1/chat/completions", {**OK, "n": 1.0, "max_tokens": "lots"}, "max_tokens"),
        ("/v1/chat/completions", {**OK, "max_tokens": True}, "max_tokens"),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/embeddings", {"model": ["m"], "input": "x"}, "model"),
    ],
)
def test_bad_fields_are_named(path: str, body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        check(path, body)
    assert err.value.param == param
    assert param in err.value.message
    assert err.value.status == 400
