"""Accounts on the command line: ``gwproxy migrate``, ``gwproxy user …``, ``gwproxy key create``.

Each command opens the configured database (``DATABASE_URL`` or the SQLite file), does one thing
through ``UserService`` and exits. ``key create`` prints the new key alone on stdout, so scripts
can capture it; everything else a person needs to read goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from gwproxy import log as logconf
from gwproxy.auth.passwords import WeakPassword, check_strength
from gwproxy.auth.tokens import TokenCodec
from gwproxy.auth.users import UserService
from gwproxy.config import Config
from gwproxy.errors import GatewayError
from gwproxy.store import migrator
from gwproxy.store.engine import create_engine, describe


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
                print(
                    f"gwproxy: {describe(cfg.database)} is not migrated: run `gwproxy migrate` first", file=sys.stderr
                )
                return 2
            codec = TokenCodec(cfg.auth, demo=True)  # commands sign no tokens
            return await work(UserService(engine, codec, cfg.auth.refresh_expire_days))
        except GatewayError as exc:
            print(f"gwproxy: {exc.message}", file=sys.stderr)
            return 1
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
        print(f"gwproxy: {describe(cfg.database)} is at revision {args.revision}", file=sys.stderr)
        return 0

    return asyncio.run(main())


def cmd_user(cfg: Config, args: argparse.Namespace) -> int:
    action = args.user_command

    async def work(users: UserService) -> int:
        if action == "add":
            user = await users.create_user(args.name, _password(args), args.role)
            print(f"created user {user.username} (id {user.id}, {user.role})", file=sys.stderr)
        elif action == "list":
            for u in await users.list_users():
                state = "active" if u.active else "disabled"
                print(f"{u.id}\t{u.username}\t{u.role}\t{state}\t{u.created_at.isoformat()}")
        elif action == "set-role":
            user = await users.find_user(args.name)
            await users.update_user(user.id, role=args.role)
            print(f"{user.username} is now {args.role}", file=sys.stderr)
        elif action == "set-password":
            user = await users.find_user(args.name)
            await users.set_password(user.id, _password(args))
            print(f"password of {user.username} changed", file=sys.stderr)
        elif action == "set-limits":
            from gwproxy.ratelimit.policy import set_overrides

            user = await users.find_user(args.name)
            values = {
                "requests": args.requests,
                "window": args.window,
                "tokens_per_minute": args.tokens_per_minute,
                "concurrency": args.concurrency,
            }
            await set_overrides(users.engine, user_id=user.id, key_id=None, values=values)
            shown = ", ".join(f"{k}={v}" for k, v in values.items() if v is not None) or "the defaults"
            print(f"limits of {user.username}: {shown}", file=sys.stderr)
        elif action == "disable":
            user = await users.find_user(args.name)
            await users.update_user(user.id, active=False)
            print(f"{user.username} is disabled", file=sys.stderr)
        return 0

    return _run(cfg, work)


def cmd_key(cfg: Config, args: argparse.Namespace) -> int:
    async def work(users: UserService) -> int:
        user = await users.find_user(args.user)
        value, info = await users.create_key(user.id, args.name or "", args.expires)
        print(value)
        print(f"key {info.prefix}… for {user.username} (id {info.id})", file=sys.stderr)
        return 0

    return _run(cfg, work)


def add_parsers(sub: Any, common: argparse.ArgumentParser, load: Callable[[argparse.Namespace], Config]) -> None:
    """Register the commands; ``common`` holds the shared flags, ``load`` builds the
    configuration from the parsed flags."""

    def bind(fn: Callable[[Config, argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            cfg = load(args)
            logconf.configure(cfg.server.log_level, json=False, stream=sys.stderr)
            return fn(cfg, args)

        return run

    migrate = sub.add_parser("migrate", parents=[common], help="upgrade the database schema (or --down to a revision)")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.add_argument("--down", action="store_true", help="downgrade to REVISION (e.g. base)")
    migrate.set_defaults(func=bind(cmd_migrate))

    user = sub.add_parser("user", help="manage users")
    users = user.add_subparsers(dest="user_command", required=True)
    add = users.add_parser("add", help="create a user", parents=[common])
    add.add_argument("name")
    add.add_argument("--role", choices=["user", "admin"], default="user")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    users.add_parser("list", help="list users", parents=[common])
    role = users.add_parser("set-role", help="make a user an admin or a user", parents=[common])
    role.add_argument("name")
    role.add_argument("role", choices=["user", "admin"])
    pw = users.add_parser("set-password", help="change a user's password", parents=[common])
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true")
    lim = users.add_parser(
        "set-limits", parents=[common], help="override a user's rate limits (no flags: back to the defaults)"
    )
    lim.add_argument("name")
    lim.add_argument("--requests", type=int, help="requests per window")
    lim.add_argument("--window", type=float, help="window in seconds")
    lim.add_argument("--tokens-per-minute", type=int)
    lim.add_argument("--concurrency", type=int, help="requests in flight")
    dis = users.add_parser("disable", help="disable a user (their keys and sessions stop working)", parents=[common])
    dis.add_argument("name")
    user.set_defaults(func=bind(cmd_user))

    key = sub.add_parser("key", help="manage API keys")
    keys = key.add_subparsers(dest="key_command", required=True)
    create = keys.add_parser("create", help="create an API key; prints it alone on stdout", parents=[common])
    create.add_argument("--user", required=True)
    create.add_argument("--name")
    create.add_argument("--expires", type=float, metavar="DAYS")
    key.set_defaults(func=bind(cmd_key))
