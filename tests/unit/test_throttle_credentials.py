import pytest

from gwproxy.auth import credentials
from gwproxy.config import AuthConfig
from gwproxy.errors import TooManyRequests
from gwproxy.ratelimit.guard import Guard
from gwproxy.ratelimit.store import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **kw: float) -> Guard:
    cfg = {"login_max_failures": 3, "login_lockout_seconds": 60.0, "login_username_interval": 2.0, **kw}
    return Guard(MemoryStore(clock), AuthConfig(**cfg))  # type: ignore[arg-type]


async def test_login_attempts_are_reserved_before_checking_and_slow_only_that_pair() -> None:
    clock = Clock()
    g = guard(clock)
    for _ in range(3):
        await g.reserve_login("bob", "1.2.3.4")  # three wrong guesses: nothing refunded
    with pytest.raises(TooManyRequests) as refused:
        await g.reserve_login("bob", "1.2.3.4")
    assert refused.value.headers["Retry-After"] == "20"  # one more attempt every 60 / 3 s
    await g.reserve_login("bob", "9.9.9.9")  # the owner elsewhere is not locked out
    await g.reserve_login("eve", "1.2.3.4")  # nor another user at the attacker's address
    clock.now += 20
    await g.reserve_login("bob", "1.2.3.4")


async def test_a_success_refunds_and_forgets_that_pairs_failures() -> None:
    clock = Clock()
    g = guard(clock)
    for _ in range(2):
        await g.reserve_login("bob", "a")
    ticket = await g.reserve_login("bob", "a")
    await g.login_succeeded(ticket, "bob", "a")
    for _ in range(3):
        await g.reserve_login("bob", "a")


async def test_an_address_trying_many_usernames_is_slowed() -> None:
    g = guard(Clock())
    for i in range(12):  # four times login_max_failures
        await g.reserve_login(f"user{i}", "6.6.6.6")
    with pytest.raises(TooManyRequests):
        await g.reserve_login("another", "6.6.6.6")


async def test_a_distributed_attack_on_one_username_meets_a_gentle_delay() -> None:
    clock = Clock()
    g = guard(clock)
    for i in range(12):
        await g.reserve_login("admin", f"10.0.0.{i}")
    with pytest.raises(TooManyRequests) as refused:
        await g.reserve_login("admin", "10.0.1.1")  # the owner too, but only briefly:
    assert refused.value.headers["Retry-After"] == "2"
    clock.now += 2
    await g.reserve_login("admin", "10.0.1.1")


async def test_invalid_credentials_are_charged_to_their_address_and_refused_past_the_allowance() -> None:
    clock = Clock()
    g = guard(clock, invalid_credentials_per_minute=3)
    for _ in range(3):
        await g.check_failed("1.1.1.1")
    with pytest.raises(TooManyRequests, match="invalid credentials") as refused:
        await g.check_failed("1.1.1.1")
    assert refused.value.headers["Retry-After"] == "20"  # one more every 60 / 3 s
    await g.check_failed("2.2.2.2")  # another address has its own allowance
    clock.now += 20
    await g.check_failed("1.1.1.1")


def test_credentials_shape_and_lookup() -> None:
    s = credentials.mint(credentials.API_KEY)
    assert s.value.startswith("gwp-") and len(s.value) == 47
    assert s.prefix == s.value[:12]
    assert credentials.split(s.value, credentials.API_KEY) == (s.prefix, s.digest)
    assert credentials.split(s.value, credentials.REFRESH) is None
    assert credentials.split(s.value + "x", credentials.API_KEY) is None
    assert credentials.split("gwp-short", credentials.API_KEY) is None
    assert credentials.matches(s.digest, credentials.digest(s.value))
    other = s.value[:-1] + ("A" if s.value[-1] != "A" else "B")
    assert not credentials.matches(s.digest, credentials.digest(other))
    assert credentials.mint(credentials.API_KEY).value != s.value
