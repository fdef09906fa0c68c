"""``gwproxy completion bash|zsh``: a shell completion script, built by walking this command line's
own parser, so it always offers the commands, actions and flags that exist.

Install: ``gwproxy completion bash > ~/.local/share/bash-completion/completions/gwproxy`` (or
``eval "$(gwproxy completion bash)"`` in ``~/.bashrc``); for zsh, ``eval "$(gwproxy completion zsh)"``
in ``~/.zshrc`` (it uses zsh's bash-completion support).
"""

from __future__ import annotations

import argparse
from typing import Any


def words(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[str]]:
    """For each command path (``""``, ``"user"``, ``"user add"``…), the words that may follow it:
    its sub-commands and its flags."""
    found: dict[str, list[str]] = {}
    offered: list[str] = []
    for action in parser._actions:  # argparse has no public walk of its parser tree
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                offered.append(name)
                found.update(words(child, f"{path} {name}".strip()))
        else:
            offered += [o for o in action.option_strings if o.startswith("--")]
    found[path] = sorted(set(offered))
    return found


BASH = """# gwproxy completion for bash (made by `gwproxy completion bash`)
_gwproxy() {{
    local cur path i w
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        [[ "$w" == -* ]] && continue
        case " $(_gwproxy_words "${{path:+$path }}$w") " in
            "  ") ;;
            *) path="${{path:+$path }}$w" ;;
        esac
    done
    COMPREPLY=($(compgen -W "$(_gwproxy_words "$path")" -- "$cur"))
}}
_gwproxy_words() {{
    case "$1" in
{cases}
    esac
}}
complete -o default -F _gwproxy gwproxy
"""

ZSH = """# gwproxy completion for zsh (made by `gwproxy completion zsh`)
autoload -U +X bashcompinit && bashcompinit
{bash}"""


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    table = words(parser)
    cases = "\n".join(f'        "{path}") echo "{" ".join(offer)}" ;;' for path, offer in sorted(table.items()))
    bash = BASH.format(cases=cases)
    return bash if shell == "bash" else ZSH.format(bash=bash)


def cmd_completion(args: argparse.Namespace) -> int:
    from gwproxy.cli import build_parser

    print(script(build_parser(), args.shell), end="")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    cmd = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    cmd.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    cmd.set_defaults(func=cmd_completion)
