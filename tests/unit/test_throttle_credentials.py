from gwproxy.auth import credentials
from gwproxy.auth.throttle import LoginThrottle


def test_throttle_locks_after_failures_and_expires() -> None:
    t = LoginThrottle(max_failures=3, lockout=60)
    keys = ("user:bob", "ip:1.2.3.4")
    for i in range(3):
        assert t.retry_after(keys, 100 + i) == 0
        t.failed(keys, 100 + i)
    assert t.retry_after(keys, 103) == 59  # 60 s after the latest failure
    assert t.retry_after(("user:bob", "ip:9.9.9.9"), 103) == 59  # the username is locked anywhere
    assert t.retry_after(("user:eve", "ip:1.2.3.4"), 103) == 59  # and the address for any username
    assert t.retry_after(keys, 163) == 0


def test_success_clears_the_username_only() -> None:
    t = LoginThrottle(max_failures=2, lockout=60)
    t.failed(("user:bob", "ip:a"), 0)
    t.succeeded("user:bob")
    t.failed(("user:bob", "ip:a"), 1)
    assert t.retry_after(("user:bob", "ip:b"), 2) == 0
    assert t.retry_after(("user:x", "ip:a"), 2) == 59


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
