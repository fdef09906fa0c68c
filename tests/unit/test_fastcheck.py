"""The compiled fast check may only ever say "valid" where marshmallow says valid too."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields, validate

from gwproxy.proxy.endpoints import TABLE
from gwproxy.proxy.fastcheck import compile_schema

CHECKED = {path: e.schema for path, e in TABLE.items() if e.schema is not None}

scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=5),
    st.floats(min_value=-1, max_value=3, allow_nan=False),
    st.sampled_from(["", "x", "0.5", "true", "user"]),
)
content = st.one_of(
    scalar,
    st.lists(
        st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=3)}), scalar), max_size=2
    ),
)
message = st.one_of(
    scalar,
    st.fixed_dictionaries({}, optional={"role": st.one_of(scalar, st.just("user")), "content": content}),
)
value_for = {
    "model": st.one_of(scalar, st.just("m")),
    "messages": st.one_of(scalar, st.lists(message, max_size=3)),
    "prompt": st.one_of(scalar, st.lists(scalar, max_size=2)),
    "input": st.one_of(scalar, st.lists(scalar, max_size=2)),
    "stream": scalar,
    "temperature": scalar,
    "top_p": scalar,
    "max_tokens": scalar,
    "max_completion_tokens": scalar,
    "n": scalar,
    "stream_options": st.one_of(scalar, st.just({"include_usage": True})),
    "user": scalar,
    "extra_field": scalar,
}
body = st.fixed_dictionaries({}, optional=value_for)


@settings(max_examples=1500, deadline=None)
@given(body, st.sampled_from(sorted(CHECKED)))
def test_fast_yes_implies_marshmallow_yes(data: dict[str, Any], path: str) -> None:
    check = CHECKED[path]
    if check.fast(data):
        assert check.schema.validate(data) == {}, (path, data)


def test_ordinary_requests_take_the_fast_path() -> None:
    chat = {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "x"}]}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.7,
        "top_p": 1,
        "max_tokens": 64,
        "n": 1,
        "tools": [{"type": "function"}],
    }
    assert CHECKED["/v1/chat/completions"].fast(chat)
    assert CHECKED["/v1/completions"].fast({"model": "m", "prompt": ["a", "b"], "max_tokens": 3})
    assert CHECKED["/v1/embeddings"].fast({"model": "m", "input": "x"})


def test_unknown_field_kinds_are_never_fast() -> None:
    class Odd(Schema):
        when = fields.DateTime()

    class Custom(Schema):
        n = fields.Integer(validate=validate.OneOf([1, 2]))

    assert not compile_schema(Odd())({})
    assert not compile_schema(Custom())({"n": 1})
