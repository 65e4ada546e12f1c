"""Bash completion for `memcoord`, written from the argument parser, so a new subcommand or option completes
without an edit here.

    python -m memcoord.buildtime.completion > /usr/share/bash-completion/completions/memcoord

Completes the subcommands, each subcommand's options, the choices of an option that has them, and file names where
an argument is a path. Needs nothing from the bash-completion package.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from memcoord.buildtime.manpage import arguments, subcommands

FUNCTION = "_memcoord"


def _words(items: list[str]) -> str:
    return shlex.quote(" ".join(items))


def _takes_value(action: argparse.Action) -> bool:
    return bool(action.option_strings) and action.nargs != 0


def _value_reply(action: argparse.Action) -> str:
    """The bash that fills COMPREPLY for this argument's value."""
    if action.choices is not None:
        return f'COMPREPLY=($(compgen -W {_words([str(c) for c in action.choices])} -- "$cur"))'
    if action.type is Path:
        return 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))'
    return "COMPREPLY=()"


def script(parser: argparse.ArgumentParser | None = None) -> str:
    if parser is None:
        from memcoord.cli import build_parser

        parser = build_parser()
    subs = subcommands(parser)
    top_options = [s for a in arguments(parser) for s in a.option_strings]
    lines = [
        "# bash completion for memcoord, generated from its parser (memcoord.buildtime.completion): do not edit",
        f"{FUNCTION}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
        "            -*) ;;",
        '            *) cmd="${COMP_WORDS[i]}"; break ;;',
        "        esac",
        "    done",
        '    if [[ -z "$cmd" ]]; then',
        f'        COMPREPLY=($(compgen -W {_words([n for n, _, _ in subs] + top_options)} -- "$cur"))',
        "        return 0",
        "    fi",
        '    case "$cmd" in',
    ]
    for name, _, sub in subs:
        options = [s for a in arguments(sub) for s in a.option_strings]
        valued = [a for a in arguments(sub) if _takes_value(a)]
        positionals = [a for a in arguments(sub) if not a.option_strings]
        lines.append(f"        {shlex.quote(name)})")
        if valued:
            lines.append('            case "$prev" in')
            for action in valued:
                lines.append(f"                {'|'.join(action.option_strings)}) {_value_reply(action)}; return 0 ;;")
            lines.append("            esac")
        lines.append('            if [[ "$cur" == -* ]]; then')
        lines.append(f'                COMPREPLY=($(compgen -W {_words(options)} -- "$cur"))')
        if positionals:
            lines.append("            else")
            lines.append(f"                {_value_reply(positionals[0])}")
        else:
            lines.append("            else")
            lines.append("                COMPREPLY=()")
        lines.append("            fi")
        lines.append("            ;;")
    lines += [
        "    esac",
        "    return 0",
        "}",
        f"complete -F {FUNCTION} memcoord",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.stdout.write(script())
    return 0


if __name__ == "__main__":
    sys.exit(main())
