"""Command line: ``gwproxy <command>``, one module per command group — ``serve``, ``demo``,
``sim``, ``accounts`` (migrate, user, key), ``models`` (profiles, hardware, models), ``config``
(config show) — and ``completion`` (a shell completion script built from this parser).

``gwproxy`` alone prints the help. Results go to stdout (tables with headers, or ``--json``);
what a person reads about what happened goes to stderr, one line per result.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gwproxy import __version__


def build_parser() -> argparse.ArgumentParser:
    from gwproxy.cli import accounts, completion, config, demo, models, serve, sim

    parser = argparse.ArgumentParser(prog="gwproxy", description="OpenAI-compatible gateway for self-hosted vLLM")
    parser.add_argument("--version", action="version", version=f"gwproxy {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config.toml to read (default: $GWPROXY_CONFIG or ./config.toml)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (serve, demo, sim, accounts, models, config, completion):
        group.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if extra:  # the simulator takes a vLLM command line as is, ignoring the flags it has no use for
        if args.command != "sim" or not all(a.startswith("--") or not a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        print(f"gwproxy sim: ignoring vLLM flags: {' '.join(extra)}", file=sys.stderr)
    code: int = args.func(args)
    return code
