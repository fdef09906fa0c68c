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
from gwproxy.config import ConfigError, UpstreamTarget, load_config_sources, shown

COLUMNS = (("key", "KEY"), ("value", "VALUE"), ("source", "SOURCE"))


def cmd_config_show(args: argparse.Namespace) -> int:
    try:
        cfg, sources = load_config_sources(Path(args.config) if args.config else None)
    except ConfigError as exc:
        return fail(str(exc), 2)
    rows: list[dict[str, Any]] = []
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        if section.name == "upstreams":
            rows += _upstream_rows(values, sources["upstreams"], args.key)
            continue
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


def _upstream_rows(targets: tuple[UpstreamTarget, ...], source: str, prefix: str) -> list[dict[str, Any]]:
    """``upstreams[i].KEY`` rows ([[upstreams]] tables, --upstream flags, GWPROXY_UPSTREAMS)."""
    rows = []
    for i, target in enumerate(targets):
        for f in dataclasses.fields(target):
            dotted = f"upstreams[{i}].{f.name}"
            if dotted.startswith(prefix):
                value = getattr(target, f.name)
                kind = {"api_key": "upstream.api_key", "base_url": "upstream.base_url"}.get(f.name, dotted)
                rows.append({"key": dotted, "value": shown(kind, value), "source": source})
    return rows


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", help="show the effective configuration")
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show_cmd = actions.add_parser(
        "show", parents=[common], help="every key with its value and its source; secrets hidden"
    )
    show_cmd.add_argument("key", nargs="?", default="", help="only keys starting with this, e.g. 'upstream' or 'auth.'")
    json_flag(show_cmd)
    show_cmd.set_defaults(func=cmd_config_show)
