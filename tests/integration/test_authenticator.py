"""The authenticator's caches: no database round trip for a warm credential, bounded staleness."""

from __future__ import annotations

import hmac

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy.auth import credentials
from gwproxy.auth.authenticator import Authenticator
from gwproxy.auth.tokens import TokenCodec
from gwproxy.auth.users import UserService
from gwproxy.config import AuthConfig
from gwproxy.errors import Unauthorized
from gwproxy.principal import Principal

CODEC = TokenCodec(AuthConfig(jwt_secret="s" * 40))


class CountingUsers(UserService):
    """The real service, counting its database lookups."""

    lookups = 0

    async def resolve_key(self, value: str) -> Principal | None:
        self.lookups += 1
        return await super().resolve_key(value)

    async def principal(self, user_id: int, key_id: int | None = None) -> Principal | None:
        self.lookups += 1
        return await super().principal(user_id, key_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def setup(engine: AsyncEngine) -> tuple[Authenticator, CountingUsers, Clock]:
    users = CountingUsers(engine, CODEC, 30)
    mono = Clock()
    return Authenticator(users, CODEC, ttl=5, monotonic=mono), users, mono


async def test_warm_key_and_jwt_cost_no_lookup(setup: tuple[Authenticator, CountingUsers, Clock]) -> None:
    auth, users, mono = setup
    user = await users.create_user("kim", "kim-password")
    key, _ = await users.create_key(user.id)
    for _ in range(5):
        assert (await auth.authenticate({"Authorization": f"Bearer {key}"})).user_id == user.id
    assert users.lookups == 1
    pair = await users.open_session(user)
    for _ in range(5):
        assert (await auth.authenticate({"Authorization": f"Bearer {pair.access_token}"})).via == "jwt"
    assert users.lookups == 2
    mono.now += 6  # past the TTL: looked up again
    await auth.authenticate({"x-api-key": key})
    await auth.authenticate({"Authorization": f"Bearer {pair.access_token}"})
    assert users.lookups == 4


async def test_revocation_takes_effect_after_the_ttl(setup: tuple[Authenticator, CountingUsers, Clock]) -> None:
    auth, users, mono = setup
    user = await users.create_user("kim", "kim-password")
    key, info = await users.create_key(user.id)
    await auth.authenticate({"api-key": key})
    await users.revoke_key(info.id, owner=None)
    await auth.authenticate({"api-key": key})  # still cached
    mono.now += 5.01
    with pytest.raises(Unauthorized):
        await auth.authenticate({"api-key": key})
    with pytest.raises(Unauthorized):  # a miss is cached too, and still a miss
        await auth.authenticate({"api-key": key})


async def test_key_digests_are_compared_in_constant_time(
    setup: tuple[Authenticator, CountingUsers, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    auth, users, _ = setup
    user = await users.create_user("kim", "kim-password")
    key, _ = await users.create_key(user.id)
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(credentials.hmac, "compare_digest", spy)
    await auth.authenticate({"api-key": key})
    pair = await users.open_session(user)
    await users.rotate(pair.refresh_token)
    assert len(calls) == 2 and all(len(a) == len(b) == 32 for a, b in calls)
