"""Accounts on the command line: ``gwproxy migrate``, ``gwproxy user …``, ``gwproxy key …``.

Each command opens the configured database (``DATABASE_URL`` or the SQLite file), does one thing
through ``UserService`` and exits. ``key create`` prints the new key alone on stdout, so scripts
can capture it; listings print a table (or ``--json``) on stdout; every other result is one line
on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from gwproxy import log as logconf
from gwproxy.auth.credentials import PREFIX_LEN
from gwproxy.auth.passwords import WeakPassword, check_strength
from gwproxy.auth.tokens import TokenCodec
from gwproxy.auth.users import UserService
from gwproxy.cli.common import fail, json_flag, load, say, show
from gwproxy.config import Config, items
from gwproxy.errors import GatewayError, NotFound
from gwproxy.store import migrator
from gwproxy.store.engine import create_engine, describe

USER_COLUMNS = (("id", "ID"), ("username", "USERNAME"), ("role", "ROLE"), ("state", "STATE"),
                ("capture", "CAPTURE"), ("models", "MODELS"), ("created_at", "CREATED"))  # fmt: skip
KEY_COLUMNS = (("id", "ID"), ("username", "USER"), ("name", "NAME"), ("prefix", "PREFIX"), ("state", "STATE"),
               ("models", "MODELS"), ("created_at", "CREATED"), ("expires_at", "EXPIRES"),
               ("last_used_at", "LAST USED"))  # fmt: skip


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("gwproxy: the passwords differ")
    try:
        check_strength(password)
    except WeakPassword as exc:
        raise SystemExit(f"gwproxy: {exc}") from None
    return password


def _run(cfg: Config, work: Callable[[UserService], Awaitable[int]]) -> int:
    async def main() -> int:
        engine = create_engine(cfg.database)
        try:
            if not await migrator.is_current(engine):
                return fail(f"{describe(cfg.database)} is not migrated: run `gwproxy migrate` first", 2)
            codec = TokenCodec(cfg.auth, demo=True)  # commands sign no tokens
            return await work(UserService(engine, codec, cfg.auth.refresh_expire_days))
        except GatewayError as exc:
            return fail(exc.message)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def cmd_migrate(cfg: Config, args: argparse.Namespace) -> int:
    async def main() -> int:
        engine = create_engine(cfg.database)
        try:
            if args.revision.startswith("-") or args.down:
                await migrator.downgrade(engine, args.revision)
            else:
                await migrator.upgrade(engine, args.revision)
        finally:
            await engine.dispose()
        say(f"{describe(cfg.database)} is at revision {args.revision}")
        return 0

    return asyncio.run(main())


def _when(value: Any) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _model_list(text: str | None) -> list[str] | None:
    """``--models a,b`` as a list (None when not given: no restriction)."""
    return None if text is None else items(text)


def _models_shown(models: tuple[str, ...] | None) -> str:
    return "any" if models is None else ",".join(models) or "none"


def cmd_user(cfg: Config, args: argparse.Namespace) -> int:
    action = args.user_command

    async def work(users: UserService) -> int:
        if action == "list":
            rows = [
                {
                    **u.public(),
                    "state": "active" if u.active else "disabled",
                    "created_at": _when(u.created_at),
                    "models": _models_shown(u.allowed_models),
                }
                for u in await users.list_users()
            ]
            show(rows, USER_COLUMNS, args.json)
            return 0
        if action == "add":
            user = await users.create_user(args.name, _password(args), args.role, _model_list(args.models))
            say(f"created user {user.username} (id {user.id}, {user.role})")
            return 0
        user = await users.find_user(args.name)
        if action == "set-role":
            await users.update_user(user.id, role=args.role)
            say(f"{user.username} is now {args.role}")
        elif action == "set-password":
            await users.set_password(user.id, _password(args))
            say(f"password of {user.username} changed")
        elif action == "set-limits":
            from gwproxy.ratelimit.policy import set_overrides

            values = {
                "requests": args.requests,
                "window": args.window,
                "tokens_per_minute": args.tokens_per_minute,
                "concurrency": args.concurrency,
            }
            await set_overrides(users.engine, user_id=user.id, key_id=None, values=values)
            shown = ", ".join(f"{k}={v}" for k, v in values.items() if v is not None) or "the defaults"
            say(f"limits of {user.username}: {shown}")
        elif action == "set-models":
            models = None if args.any else _model_list(args.models)
            await users.update_user(user.id, allowed_models=models)
            say(f"{user.username} may use " + (", ".join(models) if models is not None else "any model"))
        elif action == "disable":
            await users.update_user(user.id, active=False)
            say(f"{user.username} is disabled (their keys and sessions stop working)")
        elif action == "enable":
            await users.update_user(user.id, active=True)
            say(f"{user.username} is enabled")
        elif action == "delete":
            if not args.yes and sys.stdin.isatty():  # a person at a terminal confirms; scripts say --yes or not
                question = f"Delete {user.username} with their keys and conversations? [y/N] "
                if (await asyncio.to_thread(input, question)).strip().lower() not in ("y", "yes"):
                    return fail("not deleted (`gwproxy user disable` keeps their data)")
            await users.delete_user(user.id)
            say(f"{user.username} is deleted, with their keys and conversations")
        return 0

    return _run(cfg, work)


def cmd_key(cfg: Config, args: argparse.Namespace) -> int:
    action = args.key_command

    async def work(users: UserService) -> int:
        if action == "create":
            user = await users.find_user(args.user)
            value, info = await users.create_key(user.id, args.name or "", args.expires, _model_list(args.models))
            print(value)
            say(f"key {info.prefix}… for {user.username} (id {info.id})")
            return 0
        if action == "list":
            owner = (await users.find_user(args.user)).id if args.user else None
            names = {u.id: u.username for u in await users.list_users()}
            rows = []
            for k in await users.list_keys(owner):
                state = "revoked" if k.revoked_at else "expired" if _expired(k.expires_at) else "active"
                rows.append({
                    **k.public(), "username": names.get(k.user_id), "state": state, "prefix": k.prefix + "…",
                    "models": _models_shown(k.allowed_models),
                    "created_at": _when(k.created_at), "expires_at": _when(k.expires_at),
                    "last_used_at": _when(k.last_used_at),
                })  # fmt: skip
            show(rows, KEY_COLUMNS, args.json)
            return 0
        key_id = await _key_id(users, args.key)
        await users.revoke_key(key_id, None)
        say(f"key {key_id} is revoked (refused everywhere within auth.key_cache_seconds)")
        return 0

    return _run(cfg, work)


async def _key_id(users: UserService, given: str) -> int:
    """A key named by its id, its prefix as ``key list`` shows it (``gwp-AbCdEfGh…``), or the key."""
    if given.isascii() and given.isdigit():
        return int(given)
    prefix = given.rstrip("…").strip()[:PREFIX_LEN]
    found = [k for k in await users.list_keys(None) if k.prefix == prefix]
    if len(found) != 1:
        raise NotFound(f"no API key {given!r}: give its id or its prefix (gwproxy key list)")
    return found[0].id


def _expired(at: Any) -> bool:
    from datetime import UTC, datetime

    if at is None:
        return False
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return bool(at <= datetime.now(UTC))


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    def bind(fn: Callable[[Config, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            cfg = load(args)
            # the result is the one line a command prints: the services' own info lines stay quiet
            level = cfg.server.log_level if cfg.server.log_level in ("warning", "error", "critical") else "warning"
            logconf.configure(level, json=False, stream=sys.stderr)
            return fn(cfg, args)

        return run

    migrate = sub.add_parser("migrate", parents=[common], help="upgrade the database schema (or --down to a revision)")
    migrate.add_argument("revision", nargs="?", default="head", help="the revision to reach (default head)")
    migrate.add_argument("--down", action="store_true", help="downgrade to REVISION (e.g. base)")
    migrate.set_defaults(func=bind(cmd_migrate))

    user = sub.add_parser("user", help="manage users")
    users = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = users.add_parser("add", help="create a user", parents=[common])
    add.add_argument("name", help="the username")
    add.add_argument("--role", choices=["user", "admin"], default="user", help="user (default) or admin")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin (else prompted)")
    add.add_argument("--models", metavar="A,B", help="the only models the user may name (default: any)")
    json_flag(users.add_parser("list", help="list users", parents=[common]))
    models = users.add_parser("set-models", help="limit the models a user may name", parents=[common])
    models.add_argument("name", help="the username")
    which = models.add_mutually_exclusive_group(required=True)
    which.add_argument("--models", metavar="A,B", help="the only models the user may name")
    which.add_argument("--any", action="store_true", help="lift the limit: any model")
    role = users.add_parser("set-role", help="make a user an admin or a user", parents=[common])
    role.add_argument("name", help="the username")
    role.add_argument("role", choices=["user", "admin"], help="the new role")
    pw = users.add_parser("set-password", help="change a user's password", parents=[common])
    pw.add_argument("name", help="the username")
    pw.add_argument("--password-stdin", action="store_true", help="read the password from stdin (else prompted)")
    lim = users.add_parser(
        "set-limits", parents=[common], help="override a user's rate limits (no flags: back to the defaults)"
    )
    lim.add_argument("name", help="the username")
    lim.add_argument("--requests", type=int, help="requests per window")
    lim.add_argument("--window", type=float, help="window in seconds")
    lim.add_argument("--tokens-per-minute", type=int, help="prompt + completion tokens per minute")
    lim.add_argument("--concurrency", type=int, help="requests in flight")
    for name, text in (
        ("disable", "disable a user (their keys and sessions stop working; nothing is deleted)"),
        ("enable", "enable a disabled user again"),
        ("delete", "delete a user with their keys and conversations (asks first at a terminal)"),
    ):
        cmd = users.add_parser(name, help=text, parents=[common])
        cmd.add_argument("name", help="the username")
        if name == "delete":
            cmd.add_argument("--yes", action="store_true", help="do not ask (at a terminal it asks first)")
    user.set_defaults(func=bind(cmd_user))

    key = sub.add_parser("key", help="manage API keys")
    keys = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    create = keys.add_parser("create", help="create an API key; prints it alone on stdout", parents=[common])
    create.add_argument("--user", required=True, help="the username the key acts as")
    create.add_argument("--name", help="a label to recognise the key by")
    create.add_argument("--models", metavar="A,B", help="the only models the key may name (within its user's)")
    create.add_argument("--expires", type=float, metavar="DAYS", help="days until it expires (default: never)")
    listing = keys.add_parser("list", help="list API keys (never the secrets)", parents=[common])
    listing.add_argument("--user", help="only this user's keys")
    json_flag(listing)
    revoke = keys.add_parser("revoke", help="revoke an API key (see key list)", parents=[common])
    revoke.add_argument("key", help="the key's id, its prefix as key list shows it, or the key itself")
    key.set_defaults(func=bind(cmd_key))
