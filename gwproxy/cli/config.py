"""``gwproxy config show``: the effective configuration, each key with its value and where the value
came from (default, config file, environment variable, flag); secrets are never printed (only
whether they are set) and passwords in URLs are masked."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from gwproxy.cli.common import fail, json_flag, show
from gwproxy.config import ConfigError, load_config_sources, shown

COLUMNS = (("key", "KEY"), ("value", "VALUE"), ("source", "SOURCE"))


def cmd_config_show(args: argparse.Namespace) -> int:
    try:
        cfg, sources = load_config_sources(Path(args.config) if args.config else None)
    except ConfigError as exc:
        return fail(str(exc), 2)
    rows: list[dict[str, Any]] = []
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            dotted = f"{section.name}.{f.name}"
            if args.key and not dotted.startswith(args.key):
                continue
            rows.append({"key": dotted, "value": shown(dotted, getattr(values, f.name)), "source": sources[dotted]})
    if not rows:
        return fail(f"no configuration key starts with {args.key!r} (gwproxy config show lists them)", 2)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        show([{**r, "value": json.dumps(r["value"]) if not isinstance(r["value"], str) else r["value"]} for r in rows],
             COLUMNS, False)  # fmt: skip
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", help="show the effective configuration")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show_cmd = actions.add_parser(
        "show", parents=[common], help="every key with its value and its source; secrets hidden"
    )
    show_cmd.add_argument("key", nargs="?", default="", help="only keys starting with this, e.g. 'upstream' or 'auth.'")
    json_flag(show_cmd)
    show_cmd.set_defaults(func=cmd_config_show)
