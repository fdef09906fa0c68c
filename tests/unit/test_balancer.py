"""The balancer's choices, on upstreams whose load is set by hand, and the parsing of upstreams
from flags, the environment and ``[[upstreams]]`` tables."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from gwproxy.config import ConfigError, UpstreamConfig, UpstreamTarget, load_config
from gwproxy.proxy.balancer import SKEW_SLACK, Balancer, conversation
from gwproxy.proxy.stored import response_id
from gwproxy.proxy.upstream import KV_LOAD, STALE_LOAD, Upstream, read_load

CFG = UpstreamConfig(metrics_interval=1.0, eject_after=2, eject_seconds=30)


def replicas(*names: str, **weights: float) -> list[Upstream]:
    return [Upstream(UpstreamTarget(n, f"http://{n}:8000/v1", weight=weights.get(n, 1.0)), CFG) for n in names]


def talk(opening: str, turns: int) -> dict[str, Any]:
    messages: list[dict[str, str]] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": opening}]
    for t in range(turns):
        messages += [{"role": "assistant", "content": f"reply {t}"}, {"role": "user", "content": f"more {t}"}]
    return {"model": "m", "messages": messages}


def test_the_least_loaded_replica_wins_and_ties_are_taken_in_turn() -> None:
    a, b, c = replicas("a", "b", "c")
    bal = Balancer(100)
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 2
    assert bal.pick([a, b, c]) is b
    b.in_flight = 3
    c.in_flight = 3
    picked = {bal.pick([a, b, c]).name for _ in range(3)}  # type: ignore[union-attr]
    assert picked == {"a", "b", "c"}


def test_scraped_queue_kv_cache_weight_and_staleness_count() -> None:
    a, b = replicas("a", "b", b=2.0)
    now = time.monotonic()
    a.metrics_at = b.metrics_at = now
    a.waiting, a.kv = 2, 0.5
    assert a.load(now) == 2 + KV_LOAD * 0.5
    b.in_flight = 4
    assert b.load(now) == 2.0  # weight 2 halves it
    b.metrics_at = now - 3.5  # three intervals missed: counted as busy
    assert b.load(now) == (4 + STALE_LOAD) / 2
    assert Balancer(0).pick([a, b]) is a


def test_ejected_replicas_are_left_out_unless_all_are() -> None:
    a, b = replicas("a", "b")
    a.failed("refused")
    assert not a.ejected
    a.failed("refused")
    assert a.ejected and a.ejections == 1 and a.errors == {"refused": 2}
    b.in_flight = 50
    bal = Balancer(100)
    assert bal.pick([a, b]) is b
    b.failed("refused")
    b.failed("refused")
    assert bal.pick([a, b]) is a  # every replica ejected: one is tried anyway
    assert bal.pick([a, b], tried=a) is b
    assert bal.pick([a], tried=a) is None


def test_a_conversation_keeps_its_replica_until_it_is_badly_skewed_or_gone() -> None:
    a, b = replicas("a", "b")
    bal = Balancer(100)
    first = bal.pick([a, b], talk("hello", 0))
    assert first is not None
    other = b if first is a else a
    first.in_flight = 2  # busier, yet not badly so: the conversation stays
    assert bal.pick([a, b], talk("hello", 1)) is first
    assert bal.pick([a, b], talk("hello", 3)) is first
    first.in_flight = int(2 * other.in_flight + SKEW_SLACK) + 1  # badly skewed: this request moves
    assert bal.pick([a, b], talk("hello", 4)) is other
    first.in_flight = 0
    assert bal.pick([a, b], talk("hello", 5)) is first  # ...but the conversation stays home
    first.failed("refused")
    first.failed("refused")  # gone: the conversation moves and sticks to its new replica
    assert bal.pick([a, b], talk("hello", 6)) is other
    first.restore()
    assert bal.pick([a, b], talk("hello", 7)) is other


def test_first_turns_are_placed_by_load_not_by_stickiness() -> None:
    """The same opening sent by many callers (a shared prompt) is spread, not piled on one."""
    a, b = replicas("a", "b")
    bal = Balancer(100)
    got = []
    for _ in range(4):
        u = bal.pick([a, b], talk("same", 0))
        assert u is not None
        u.in_flight += 1
        got.append(u.name)
    assert sorted(got) == ["a", "a", "b", "b"]


def test_affinity_memory_is_bounded() -> None:
    a, b = replicas("a", "b")
    bal = Balancer(2)
    for name in ("x", "y", "z"):
        bal.pick([a, b], talk(name, 0))
    assert bal.replica_of(talk("x", 1)) is None  # the oldest forgotten
    assert bal.replica_of(talk("z", 1)) is not None


def test_the_conversation_key_is_the_opening() -> None:
    one = conversation(talk("hi", 0))
    two = conversation(talk("hi", 2))
    assert one is not None and two is not None
    assert one[0] == two[0] and (one[1], two[1]) == (False, True)
    assert conversation(talk("other", 2))[0] != one[0]  # type: ignore[index]
    assert conversation({"prompt": "x"}) is None and conversation({"messages": []}) is None


def test_vllm_load_is_read_from_its_metrics_text() -> None:
    text = b"""# HELP vllm:num_requests_waiting Number of requests waiting.
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting_by_reason{reason="capacity"} 9.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5
"""
    assert read_load(text) == (5.0, 0.5)
    assert read_load(b'vllm:gpu_cache_usage_perc{model_name="m"} 0.75\n') == (0.0, 0.75)  # vLLM before 0.10


def test_upstreams_from_flags_environment_and_tables(tmp_path: Path) -> None:
    cfg = load_config(None, {}, {"upstreams": ["a1=http://h1:8000/v1", "http://h2:9000/v1"]})
    assert [(t.name, t.base_url) for t in cfg.upstream_targets()] == [
        ("a1", "http://h1:8000/v1"),
        ("h2:9000", "http://h2:9000/v1"),
    ]
    env = {"GWPROXY_UPSTREAMS": "x=http://x:1/v1, y=http://y:2/v1", "VLLM_BASE_URL": "http://ignored:1/v1"}
    assert [t.name for t in load_config(None, env).upstream_targets()] == ["x", "y"]
    path = tmp_path / "c.toml"
    path.write_text(
        '[[upstreams]]\nname = "big"\nbase_url = "http://big:8000/v1"\napi_key = "k"\nweight = 3\n'
        '[[upstreams]]\nbase_url = "https://small/v1"\n'
    )
    targets = load_config(path, {}).upstream_targets()
    assert targets == (
        UpstreamTarget("big", "http://big:8000/v1", "k", 3.0),
        UpstreamTarget("small:443", "https://small/v1", "", 1.0),
    )
    one = load_config(None, {"VLLM_BASE_URL": "http://vllm:8000/v1"}).upstream_targets()
    assert [(t.name, t.base_url) for t in one] == [("vllm:8000", "http://vllm:8000/v1")]


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ('[[upstreams]]\nbase_url = "ftp://x"\n', "'upstreams[0].base_url'"),
        ('[[upstreams]]\nbase_url = "http://x/v1"\nweight = 0\n', "weight"),
        ('[[upstreams]]\nbase_url = "http://x/v1"\nname = "a b"\n', "name"),
        ('[[upstreams]]\nbase_url = "http://x/v1"\ncolour = "red"\n', "unknown key(s) colour"),
        ('[[upstreams]]\nbase_url = "http://x/v1"\n[[upstreams]]\nbase_url = "http://x/v1"\n', "used twice"),
        ('upstreams = "http://x/v1"\n', "array of tables"),
    ],
)
def test_bad_upstreams_are_refused_naming_the_key(tmp_path: Path, table: str, said: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(table)
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_config(path, {})


def test_the_response_id_is_read_from_the_first_chunk_of_an_answer() -> None:
    body = b'{"id":"resp_4f2a9c","created_at":1,"object":"response","output":[{"id":"msg_4f2a9c"}]}'
    created = b'event: response.created\ndata: {"response":{"id":"resp_77ab","created_at":1},"sequence_number":0}\n\n'
    assert response_id(body) == "resp_4f2a9c"
    assert response_id(created) == "resp_77ab"
    assert response_id(b'{"id": "resp_x1"}') == "resp_x1"  # spaced JSON too
    for other in (b'{"id":"chatcmpl-1"}', b"", b'{"error":{"message":"no"}}', b" " * 5000 + b'{"id":"resp_late"}'):
        assert response_id(other) is None  # only the answer's opening is looked at
