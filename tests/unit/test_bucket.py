import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gwproxy.address import client_ip
from gwproxy.config import RateLimitConfig
from gwproxy.ratelimit.bucket import Limit, State, level, settle, take
from gwproxy.ratelimit.policy import estimate_tokens

TEN_PER_10S = Limit.per_window(10, 10)  # burst 10, 1 token per second


def test_burst_then_refill() -> None:
    state = None
    for i in range(10):
        d, [state] = take([state], [TEN_PER_10S], [1], 100.0)
        assert d.allowed and d.readings[0].remaining == 9 - i
    d, _ = take([state], [TEN_PER_10S], [1], 100.0)
    assert not d.allowed and d.retry_after == pytest.approx(1.0)
    d, [state] = take([state], [TEN_PER_10S], [1], 101.0)
    assert d.allowed  # one token came back after one second
    assert d.readings[0].reset_after == pytest.approx(10.0)


def test_fractional_rates() -> None:
    lim = Limit.per_window(3, 7)  # 3 per 7 seconds
    _, [s] = take([None], [lim], [3], 0.0)
    d, _ = take([s], [lim], [1], 2.0)
    assert not d.allowed and d.retry_after == pytest.approx(7 / 3 - 2.0)
    d, _ = take([s], [lim], [1], 7 / 3 + 1e-9)
    assert d.allowed


def test_all_or_nothing_across_buckets() -> None:
    a, b = Limit(5, 1), Limit(2, 1)
    states = [None, State(0.5, 0.0)]
    d, new = take(states, [a, b], [1, 1], 0.0)
    assert not d.allowed and d.retry_after == pytest.approx(0.5)
    assert new[0].tokens == 5  # nothing was taken from the bucket that had room


def test_clock_backwards_and_huge_gaps() -> None:
    s = State(3.0, 1000.0)
    assert level(s, TEN_PER_10S, 900.0) == 3.0  # time went backwards: no refill, no loss
    assert level(s, TEN_PER_10S, 1e12) == 10.0  # a huge gap fills to capacity, not beyond


def test_cost_above_capacity_waits_for_a_full_bucket() -> None:
    lim = Limit.per_window(100, 60)
    d, [s] = take([None], [lim], [250], 0.0)
    assert d.allowed and s.tokens == 0
    d, _ = take([s], [lim], [250], 30.0)
    assert not d.allowed and d.retry_after == pytest.approx(30.0)


def test_zero_rate_never_refills() -> None:
    d, _ = take([State(0, 0)], [Limit(1, 0.0)], [1], 10.0)
    assert not d.allowed and math.isinf(d.retry_after)


def test_settle_charges_and_refunds_with_bounded_debt() -> None:
    lim = Limit.per_window(1000, 60)
    s = State(500, 0.0)
    assert settle(s, lim, 200, 0.0).tokens == 300
    assert settle(s, lim, -200, 0.0).tokens == 700
    assert settle(s, lim, 10_000, 0.0).tokens == -1000
    assert settle(s, lim, -10_000, 0.0).tokens == 1000


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 5), st.floats(0.1, 20)), min_size=1, max_size=40),
    st.floats(1, 50),
    st.floats(0.01, 10),
)
def test_never_admits_more_than_burst_plus_refill(steps: list[tuple[float, float]], cap: float, rate: float) -> None:
    lim = Limit(cap, rate)
    state, now, taken = None, 0.0, 0.0
    for gap, cost in steps:
        now += gap
        d, [new] = take([state], [lim], [cost], now)
        if d.allowed:
            taken += min(cost, cap)
            state = new
        assert 0 <= d.readings[0].remaining <= cap
    assert taken <= cap + rate * now + 1e-6


def test_client_ip_trusts_only_configured_proxies() -> None:
    trusted = RateLimitConfig(trusted_proxies="10.0.0.0/8, 127.0.0.1").trusted_networks()
    assert client_ip("203.0.113.9", "1.2.3.4", trusted) == "203.0.113.9"  # untrusted peer: header ignored
    assert client_ip("10.1.1.1", "1.2.3.4", trusted) == "1.2.3.4"
    assert client_ip("10.1.1.1", "6.6.6.6, 1.2.3.4, 10.2.2.2", trusted) == "1.2.3.4"  # right-most untrusted
    assert client_ip("10.1.1.1", "garbage", trusted) == "10.1.1.1"
    assert client_ip("127.0.0.1", None, trusted) == "127.0.0.1"
    assert client_ip(None, "1.2.3.4", trusted) == "unknown"


def test_token_estimate() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50, "n": 2}
    assert estimate_tokens(body, 512) == (100, 100)
    assert estimate_tokens({"prompt": "y" * 40}, 512) == (10, 512)
    assert estimate_tokens(None, 512) == (0, 512)
