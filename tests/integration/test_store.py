"""Migrations and the users service on both engines (SQLite file and a real PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from gwproxy.auth.tokens import TokenCodec
from gwproxy.auth.users import UserService, utcnow
from gwproxy.config import AuthConfig, DatabaseConfig
from gwproxy.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from gwproxy.store import migrator
from gwproxy.store.engine import create_engine, current_revision
from gwproxy.store.tables import metadata, unmanaged

CODEC = TokenCodec(AuthConfig(jwt_secret="s" * 40))


async def test_migrations_run_forward_and_back(db_url: str) -> None:
    engine = create_engine(DatabaseConfig(url=db_url))
    try:
        assert await current_revision(engine) is None
        await migrator.upgrade(engine)
        assert await current_revision(engine) == migrator.head()
        assert await migrator.is_current(engine)
        async with engine.connect() as conn:
            opts = {"include_name": lambda name, kind, parent: not unmanaged(name)}
            diffs = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c, opts=opts), metadata))
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert diffs == [], diffs  # the migrations build exactly the tables the code uses
        assert {"users", "api_keys", "refresh_tokens"} <= tables
        await migrator.downgrade(engine, "base")
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert tables <= {"alembic_version"}
        await migrator.upgrade(engine)
        assert await migrator.is_current(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def users(engine: AsyncEngine) -> UserService:
    return UserService(engine, CODEC, refresh_days=30)


async def test_users_create_find_update(users: UserService) -> None:
    alice = await users.create_user("alice", "password-1", "admin")
    bob = await users.create_user("bob", "password-2")
    assert (alice.role, bob.role, bob.active) == ("admin", "user", True)
    with pytest.raises(Conflict):
        await users.create_user("alice", "password-3")
    with pytest.raises(InvalidRequest):
        await users.create_user("has space", "password-3")
    with pytest.raises(InvalidRequest):
        await users.create_user("carol", "password-3", "root")
    assert [u.username for u in await users.list_users()] == ["alice", "bob"]
    assert await users.count_admins() == 1
    assert (await users.update_user(bob.id, role="admin")).role == "admin"
    assert (await users.update_user(bob.id, active=False)).active is False
    with pytest.raises(NotFound):
        await users.update_user(999, role="user")
    with pytest.raises(NotFound):
        await users.find_user("nobody")


async def test_authenticate(users: UserService) -> None:
    bob = await users.create_user("bob", "correct-horse")
    assert (await users.authenticate("bob", "correct-horse")) == bob
    assert await users.authenticate("bob", "wrong-horse!") is None
    assert await users.authenticate("nobody", "correct-horse") is None
    await users.set_password(bob.id, "battery-staple")
    assert await users.authenticate("bob", "battery-staple") is not None
    await users.update_user(bob.id, active=False)
    assert await users.authenticate("bob", "battery-staple") is None


async def test_api_keys_resolve_revoke_expire(users: UserService) -> None:
    bob = await users.create_user("bob", "password-1")
    eve = await users.create_user("eve", "password-2")
    value, info = await users.create_key(bob.id, "laptop")
    assert value.startswith(info.prefix) and info.name == "laptop"
    principal = await users.resolve_key(value)
    assert principal is not None and (principal.user_id, principal.via, principal.key_id) == (
        bob.id,
        "api_key",
        info.id,
    )
    [listed] = await users.list_keys(bob.id)
    assert listed.last_used_at is not None and "key" not in listed.public()
    assert await users.resolve_key(value[:-1] + ("A" if value[-1] != "A" else "B")) is None
    assert await users.resolve_key("gwp-nonsense") is None
    with pytest.raises(NotFound):
        await users.revoke_key(info.id, owner=eve.id)  # someone else's key: as if it did not exist
    await users.revoke_key(info.id, owner=bob.id)
    assert await users.resolve_key(value) is None
    value2, _ = await users.create_key(bob.id, expires_days=1)
    assert await users.resolve_key(value2) is not None
    later = UserService(users.engine, CODEC, 30, clock=lambda: utcnow() + timedelta(days=2))
    assert await later.resolve_key(value2) is None
    value3, _ = await users.create_key(bob.id)
    await users.update_user(bob.id, active=False)
    assert await users.resolve_key(value3) is None


async def test_refresh_rotation_and_reuse_revokes_the_family(users: UserService) -> None:
    bob = await users.create_user("bob", "password-1")
    first = await users.open_session(bob)
    assert CODEC.verify(first.access_token, utcnow().timestamp()).user_id == bob.id
    second = await users.rotate(first.refresh_token)
    third = await users.rotate(second.refresh_token)
    with pytest.raises(Unauthorized, match="already used"):
        await users.rotate(first.refresh_token)  # replayed: the thief and the owner are cut off
    with pytest.raises(Unauthorized):
        await users.rotate(third.refresh_token)
    other = await users.open_session(bob)
    await users.close_session(other.refresh_token)
    with pytest.raises(Unauthorized):
        await users.rotate(other.refresh_token)
    with pytest.raises(Unauthorized, match="malformed"):
        await users.rotate("gwr-short")
    session = await users.open_session(bob)
    await users.update_user(bob.id, active=False)
    with pytest.raises(Unauthorized):
        await users.rotate(session.refresh_token)


async def test_conversation_pages_with_equal_times_lose_and_repeat_nothing(users: UserService) -> None:
    """The cursor is a row value (updated_at, id): conversations updated at the same instant are
    paged by id, each once, on SQLite and PostgreSQL alike."""
    from sqlalchemy import update

    from gwproxy.conversations import repository
    from gwproxy.store.tables import conversations

    engine = users.engine
    owner = await users.create_user("pager", "pager-password")
    async with engine.begin() as conn:
        made = [await repository.create_conversation(conn, owner.id, f"c{i}", None, {}) for i in range(7)]
        same = made[0]["updated_at"]
        await conn.execute(update(conversations).values(updated_at=same))  # all at one instant
    seen: list[str] = []
    cursor = None
    async with engine.connect() as conn:
        while True:
            page = await repository.list_conversations(
                conn, owner.id, limit=3, cursor=cursor, model=None, since=None, until=None, text=None
            )
            seen += [c["id"] for c in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
    assert sorted(seen) == sorted(c["id"] for c in made) and seen == sorted(seen, reverse=True)
