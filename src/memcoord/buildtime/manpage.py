"""memcoord(8) and memcoord.toml(5), written as roff from the code they describe, so the pages cannot drift from it.

memcoord(8) walks the argument parser (every subcommand, its arguments, their help) and collects the exit codes
(the sysexits constants the modules define) and the environment variables the sources read. memcoord.toml(5) walks
the pydantic Config model: every section and key, its type, default, unit (from the name's suffix), bounds and
description. The prose around them (signals, files, the config file's rules) is written here.

    python -m memcoord.buildtime.manpage OUTDIR      # writes OUTDIR/memcoord.8 and OUTDIR/memcoord.toml.5
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import os
import pkgutil
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
import tomli_w
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from memcoord import __version__

# Fixed, so that two builds of one version write the same pages (reproducible .deb).
SOURCE_DATE = os.environ.get("SOURCE_DATE_EPOCH")

# What each sysexits code means for memcoord; a code the sources define but this table lacks still gets listed,
# with its sysexits.h name.
EXIT_MEANINGS = {
    0: "Success. For \\fBcheck-config\\fR: the file is valid.",
    64: "EX_USAGE: wrong arguments (an unknown subcommand or option, a value that is not a number).",
    65: "EX_DATAERR: an input file other than the config (a scenario, a timeline) is malformed.",
    66: "EX_NOINPUT: a file cannot be read (missing, a directory, no permission); for \\fBrestore\\fR, a named "
    "domain is not running or has no balloon (nothing is changed).",
    69: "EX_UNAVAILABLE: what the command needs is not there: the daemon is not running or left no state file "
    "(\\fBstatus\\fR, \\fBmonitor\\fR, \\fBprint-config --running\\fR), libvirt cannot be reached, or an "
    "optional Python package is missing (matplotlib for \\fBplot\\fR); for \\fBmake-room\\fR, no daemon answers on "
    "\\fBroom.socket\\fR.",
    75: "EX_TEMPFAIL: \\fBrestore\\fR left a guest short of its target (the host guard, a failed setMemory, or "
    "its settings not yet read); run it again once the host has memory. \\fBmake-room\\fR: the room is not there "
    "after \\fB--timeout\\fR (the shortfall is printed; the daemon keeps holding what it could).",
    77: "EX_NOPERM: \\fBrestore\\fR refused: a running memcoord manages these guests and would move them again "
    "(stop it or exclude them, or use \\fB--force\\fR); \\fBmake-room\\fR refused: the caller is not root, "
    "memcoord's user nor in \\fBstatus.group\\fR.",
    78: "EX_CONFIG: the config file is invalid; every error is printed as FILE: KEY = VALUE: what is wrong. The "
    "systemd unit does not restart the daemon on this code (RestartPreventExitStatus=78).",
}
ENVIRONMENT_MEANINGS = {
    "NOTIFY_SOCKET": "Set by systemd for Type=notify: memcoord sends READY=1, STATUS=, RELOADING=1, STOPPING=1 and "
    "watchdog pings there. Unset: no notifications (running in a terminal).",
    "WATCHDOG_USEC": "Set by systemd from WatchdogSec=: memcoord pings at least every half of it, and all libvirt "
    "calls of one tick share a deadline of 40 % of it.",
    "WATCHDOG_PID": "Set by systemd: the watchdog applies only when it names memcoord's process.",
    "JOURNAL_STREAM": "Set by systemd when stderr is the journal: memcoord then logs structured journal records "
    "(MEMCOORD_* fields) instead of text lines.",
}
FIRST_CONFIG = """\
[libvirt]
domains = ["web-*", "db1"]

[loop]
dry_run = true

[domains."db1"]
min_mib = 4096
"""
# memcoord(8)'s EXAMPLES: what each does, then the commands.
EXAMPLES_8 = (
    ("See what memcoord would do to each guest now, before it does anything:", "memcoord plan"),
    (
        "Check a changed config file, then apply it without a restart:",
        "memcoord check-config /etc/memcoord.toml && systemctl reload memcoord",
    ),
    (
        "Start it now and at every boot, then follow its actions:",
        "systemctl enable --now memcoord\njournalctl -u memcoord -f",
    ),
    (
        "Why a guest's memory changed: every action on it, each with its explanation from the journal's catalog:",
        "journalctl -x -u memcoord MEMCOORD_DOMAIN=web1",
    ),
    (
        "Hand the guests back to manual control, before removing the package:",
        "systemctl stop memcoord\nmemcoord restore",
    ),
)
UNITS = {"_mib": "MiB", "_kib": "KiB", "_pct": "percent", "_per_s": "per second", "_s": "seconds"}


# -- roff ------------------------------------------------------------------------------------------------------
def esc(text: str) -> str:
    """Text for a roff line: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def inline(text: str) -> str:
    """Text for a roff line (esc), with `code` spans in bold without their backticks."""
    return re.sub(r"`([^`]+)`", r"\\fB\1\\fR", esc(text))


def example(text: str) -> list[str]:
    """An example block: indented, in a fixed-width font, line by line as given."""
    return [".RS 4", ".EX", esc(text.rstrip("\n")), ".EE", ".RE"]


def prose(text: str) -> list[str]:
    """A docstring as roff: paragraphs (blank-line separated) as .PP, blocks indented deeper than the text as
    example blocks (.EX/.EE, kept line by line), `code` spans in bold without their backticks."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        lines = block.split("\n")
        if out:
            out.append(".PP")
        if all(line.startswith("    ") for line in lines):
            out += example(textwrap.dedent(block))
        else:
            out.append(inline(" ".join(block.split())))
    return out


def _header(name: str, section: int, title: str) -> list[str]:
    day = (
        datetime.datetime.fromtimestamp(int(SOURCE_DATE), datetime.UTC).date() if SOURCE_DATE else datetime.date.today()
    )
    return [
        f'.\\" Generated by memcoord.buildtime.manpage from the code ({title}); do not edit.',
        f'.TH {name.upper()} {section} "{day.isoformat()}" "memcoord {__version__}" "memcoord"',
    ]


# -- memcoord(8) -----------------------------------------------------------------------------------------------
def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the order the CLI registers them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen: set[int] = set()
            out = []
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out.append((name, helps.get(name, sub.description or ""), sub))
            return out
    return []


def arguments(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The arguments of a parser that a user can give (help included, suppressed ones left out)."""
    for action in parser._actions:
        if action.help != argparse.SUPPRESS and not isinstance(action, argparse._SubParsersAction):
            yield action


def _argument_term(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if not action.option_strings:
        return f"\\fI{esc(formatter._format_args(action, action.dest))}\\fR"
    names = ", ".join(f"\\fB{esc(s)}\\fR" for s in action.option_strings)
    if action.nargs == 0:
        return names
    value = formatter._format_args(action, action.dest.upper())
    return f"{names} \\fI{esc(value)}\\fR"


def _argument_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = sentence(parser._get_formatter()._expand_help(action)) if action.help else ""
    if action.choices is not None and action.metavar is not None:  # else the term shows them: {a,b,c}
        text += f" One of: {', '.join(str(c) for c in action.choices)}."
    return text.strip()


def sentence(text: str) -> str:
    """Help text as a sentence: capital first letter, final full stop."""
    text = text.strip()
    if not text:
        return text
    if not text.startswith("memcoord"):  # the command's name stays lower case
        text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _usage(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_usage().removeprefix("usage:").split())


def exit_codes() -> dict[int, str]:
    """Every exit code the package uses, with its meaning: its modules' EX_* constants, and the os.EX_* names its
    sources use directly."""
    codes: set[int] = set()
    for module in _modules():
        for name, value in vars(module).items():
            if name.startswith("EX_") and isinstance(value, int) and not isinstance(value, bool):
                codes.add(value)
    for path in _sources():
        for name in re.findall(r"\bos\.(EX_[A-Z]+)\b", path.read_text(encoding="utf-8")):
            if isinstance(getattr(os, name, None), int):
                codes.add(getattr(os, name))
    sysexits = {getattr(os, n): n for n in dir(os) if n.startswith("EX_")}
    return {code: EXIT_MEANINGS.get(code, f"{sysexits.get(code, 'exit code')} (sysexits.h).") for code in sorted(codes)}


def environment_variables() -> list[str]:
    """The environment variables the package's sources read."""
    pattern = re.compile(r"""environ(?:\.get\(|\[)\s*["']([A-Z_][A-Z0-9_]*)["']""")
    names = {m for path in _sources() for m in pattern.findall(path.read_text(encoding="utf-8"))}
    return sorted(names)


def _sources() -> list[Path]:
    """The package's Python sources but the build-time ones (whose environment and codes are not memcoord's)."""
    here = Path(__file__).resolve().parent
    return [p for p in sorted(here.parent.rglob("*.py")) if p.resolve().parent != here]


def _modules() -> Iterator[types.ModuleType]:
    package = importlib.import_module("memcoord")
    yield package
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith(".__main__"):
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError:  # an optional dependency (matplotlib) absent: its module defines no other codes
            continue


def memcoord_8(parser: argparse.ArgumentParser | None = None) -> str:
    from memcoord import cli
    from memcoord.admin.cliargs import DEFAULT_CONFIG_PATH
    from memcoord.core.config import RoomConfig, StatusConfig

    parser = parser or cli.build_parser()
    subs = subcommands(parser)
    lines = _header("memcoord", 8, "argparse parser of memcoord.cli")
    lines += [
        ".SH NAME",
        "memcoord \\- memory coordinator for KVM hosts (virtio balloon, libvirt)",
        ".SH SYNOPSIS",
        ".B memcoord",
        "[\\fB\\-\\-version\\fR] [\\fB\\-h\\fR]",
        ".I command",
        "[\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        "Every tick (\\fBloop.interval_s\\fR) \\fBmemcoord run\\fR reads the balloon statistics of every running "
        "guest it manages with one libvirt call, classifies each guest (starving, wasteful, idle, busy) and moves "
        "memory with the virtio balloon: it grows starving guests and reclaims from wasteful idle ones, and never "
        "lets a grow take the host below its guard (\\fBhost.min_available_mib\\fR). Every action is a journal "
        "record. The systemd unit \\fBmemcoord.service\\fR runs \\fBmemcoord run\\fR; the other commands inspect, "
        "check or try things and change nothing unless their description says so.",
        ".PP",
        "To try it safely on a host: limit \\fBlibvirt.domains\\fR to the guests you mean, set "
        "\\fBloop.dry_run = true\\fR (decide and log, never resize) and read the journal, before enabling the unit.",
        ".SH COMMANDS",
    ]
    for name, help_text, sub in subs:
        lines += [".SS " + esc(name), f".B {esc(_usage(sub))}", ".PP", esc(sentence(help_text))]
        if sub.description and sub.description != help_text:
            lines += [".PP", inline(sub.description)]
        for action in arguments(sub):
            lines += [".TP", _argument_term(sub, action), esc(_argument_help(sub, action))]
    lines += [".SH OPTIONS", "Before the command:"]
    for action in arguments(parser):
        lines += [".TP", _argument_term(parser, action), esc(_argument_help(parser, action))]
    lines += [".SH EXIT STATUS", "The codes follow sysexits.h, as scripts expect:"]
    for code, meaning in exit_codes().items():
        lines += [".TP", f"\\fB{code}\\fR", meaning]
    lines += [
        ".SH SIGNALS",
        "For \\fBmemcoord run\\fR:",
        ".TP",
        "\\fBSIGHUP\\fR",
        "Reload the config file before the next tick. A file that does not validate is refused: the errors go to "
        "the journal and to STATUS=, and the daemon keeps its current config. \\fBsystemctl reload memcoord\\fR "
        "runs \\fBmemcoord check-config\\fR first and fails on a bad file without sending the signal.",
        ".TP",
        "\\fBSIGTERM\\fR, \\fBSIGINT\\fR",
        "Stop after the current tick and exit 0. Guests keep the memory they have; nothing is undone.",
        ".SH ENVIRONMENT",
    ]
    for name in environment_variables():
        lines += [".TP", f"\\fB{name}\\fR", ENVIRONMENT_MEANINGS.get(name, "Read by memcoord.")]
    lines += [
        ".SH FILES",
        ".TP",
        f"\\fI{esc(str(DEFAULT_CONFIG_PATH))}\\fR",
        "The config file; see \\fBmemcoord.toml\\fR(5). A conffile of the Debian package.",
        ".TP",
        f"\\fI{esc(StatusConfig().path)}\\fR",
        "The daemon's view, rewritten after every tick; read by \\fBstatus\\fR, \\fBmonitor\\fR and "
        "\\fBprint-config \\-\\-running\\fR (\\fBstatus.path\\fR).",
        ".TP",
        "\\fI/var/lib/memcoord/\\fR",
        "The unit's state directory: the place for \\fBtimeline.path\\fR.",
        ".TP",
        "\\fI/usr/lib/systemd/system/memcoord.service\\fR",
        "The unit of the Debian package (/lib/systemd/system on Debian 12; \\fBmake install\\fR puts it in "
        "/etc/systemd/system). Change it with \\fBsystemctl edit memcoord\\fR.",
        ".TP",
        "\\fI/usr/lib/systemd/catalog/memcoord.catalog\\fR",
        "What each of memcoord's journal records means, shown by \\fBjournalctl \\-x\\fR (the package runs "
        "\\fBjournalctl \\-\\-update\\-catalog\\fR through systemd's trigger).",
        ".TP",
        "\\fI/usr/share/memcoord/\\fR",
        "Prometheus alert rules, scrape config and Grafana dashboard; the unit drop-in that lets a central "
        "Prometheus scrape the metrics endpoint.",
        ".TP",
        "\\fI/usr/share/memcoord/libvirt-hook/memcoord\\fR",
        "The opt-in libvirt hook: linked into \\fI/etc/libvirt/hooks/qemu.d/\\fR (then restart libvirtd), it runs "
        "\\fBmake-room \\-\\-for\\fR DOMAIN on \\fBprepare begin\\fR, for at most 5 s, and lets the guest start "
        "whatever happens (its messages: \\fBjournalctl \\-t memcoord-hook\\fR).",
        ".TP",
        f"\\fI{esc(RoomConfig().socket)}\\fR",
        "The daemon's make-room socket (\\fBroom.socket\\fR), mode 0660, group \\fBstatus.group\\fR.",
        ".TP",
        "\\fI/opt/venvs/memcoord/\\fR",
        "The Python environment of the Debian 12 package (pydantic and the other dependencies from PyPI; libvirt "
        "and systemd bindings from Debian). The Debian 13 package has none: it uses Debian's python3 libraries.",
        ".SH EXAMPLES",
    ]
    for i, (what, commands) in enumerate(EXAMPLES_8):
        lines += [".PP"] if i else []
        lines += [esc(what), *example(commands)]
    lines += [
        ".SH SEE ALSO",
        "\\fBmemcoord.toml\\fR(5), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBvirsh\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


# -- memcoord.toml(5) ------------------------------------------------------------------------------------------
def sections(model: type[BaseModel] | None = None) -> list[tuple[str, type[BaseModel], bool]]:
    """(TOML table, model, keyed) of every section; keyed: a table per name, e.g. [domains."NAME"]."""
    from memcoord.core.config import Config

    model = model or Config
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if _is_model(annotation):
            out.append((name, annotation, False))
        elif typing.get_origin(annotation) is dict and _is_model(typing.get_args(annotation)[1]):
            out.append((f'{name}."NAME"', typing.get_args(annotation)[1], True))
    return out


def top_level_keys(model: type[BaseModel] | None = None) -> list[str]:
    """Keys of the top table that are not sections."""
    from memcoord.core.config import Config

    model = model or Config
    table_names = {s.split(".")[0] for s, _, _ in sections(model)}
    return [name for name in model.model_fields if name not in table_names]


def _is_model(annotation: Any) -> typing.TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_name(annotation: Any) -> str:
    """A TOML-ish name for a field's type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin in (tuple, list):
        return f"array of {type_name(args[0])}s"
    if origin is dict:
        return f"table of {type_name(args[1])}"
    if origin is typing.Literal:
        return "one of " + ", ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, str(annotation))


def unit_of(key: str) -> str | None:
    for suffix, unit in UNITS.items():
        if key.endswith(suffix):
            return unit
    return None


def bounds(field: FieldInfo) -> str:
    """The field's numeric bounds (Field(gt=, ge=, lt=, le=)) as text, e.g. "> 0, <= 3600"."""
    out = []
    for meta in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if isinstance(meta, getattr(annotated_types, attr.capitalize())):
                out.append(f"{sign} {getattr(meta, attr)}")
    return ", ".join(out)


def toml_value(value: Any) -> str:
    """A Python value as the TOML text of a value, on one line."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"k": value}).split("=", 1)[1].strip()


def _default_text(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=True)
    if default is None:
        return "unset"
    return toml_value(default)


def _example(key: str, field: FieldInfo) -> str:
    if field.examples:
        return f"{key} = {toml_value(field.examples[0])}"
    default = field.get_default(call_default_factory=True)
    return f"{key} = {toml_value(default)}" if default is not None else ""


def _key_entry(key: str, field: FieldInfo) -> list[str]:
    facts = [type_name(field.annotation)]
    if unit := unit_of(key):
        facts.append(unit)
    if b := bounds(field):
        facts.append(b)
    facts.append(f"default {_default_text(field)}")
    lines = [".TP", f"\\fB{esc(key)}\\fR ({esc('; '.join(facts))})", inline(field.description or "")]
    if example := _example(key, field):
        lines += [".br", f"Example: \\fB{esc(example)}\\fR"]
    return lines


def memcoord_toml_5() -> str:
    from memcoord.core.config import Config, dump, parse

    lines = _header("memcoord.toml", 5, "pydantic model memcoord.core.config.Config")
    lines += [
        ".SH NAME",
        "memcoord.toml \\- configuration of memcoord, the memory coordinator for KVM hosts",
        ".SH SYNOPSIS",
        "\\fI/etc/memcoord.toml\\fR",
        ".SH DESCRIPTION",
        "A TOML file. Every key is optional; a key left out has its default. A key the model does not know, a value "
        'of the wrong type (\\fB"150"\\fR for a number) or out of bounds makes the whole file invalid: '
        "\\fBmemcoord check-config\\fR prints every error as \\fIFILE\\fR: \\fIKEY\\fR = \\fIVALUE\\fR: what is "
        "wrong and exits 78; the daemon refuses it at start (exit 78) and on reload (it keeps the config it runs).",
        ".PP",
        "Units are in the key names: \\fB_mib\\fR MiB (1024 KiB), \\fB_pct\\fR percent, \\fB_s\\fR seconds. "
        "Check a change, then apply it without a restart:",
        ".PP",
        *example("memcoord check-config /etc/memcoord.toml && systemctl reload memcoord"),
    ]
    for table, model, keyed in sections():
        lines += [f".SH [{esc(table)}]"]
        if model.__doc__:
            lines += prose(model.__doc__)
        if keyed:
            lines += [
                ".PP",
                "One table per domain name (quoted when it holds characters other than letters, digits, - and _).",
            ]
        for key, field in model.model_fields.items():
            lines += _key_entry(key, field)
    top = top_level_keys()
    if top:
        lines += [".SH TOP-LEVEL KEYS"]
        for key in top:
            lines += _key_entry(key, Config.model_fields[key])
    parse(FIRST_CONFIG, "memcoord.toml(5) EXAMPLE")  # the example is valid, or the build stops here
    lines += [
        ".SH EXAMPLES",
        "A first config on a host: only the guests meant, decisions logged but not carried out, a floor for the "
        "database:",
        *example(FIRST_CONFIG),
        ".PP",
        "The defaults, as \\fBmemcoord print\\-config\\fR prints them for an empty file:",
        *example(dump(Config())),
        ".SH FILES",
        ".TP",
        "\\fI/etc/memcoord.toml\\fR",
        "The file \\fBmemcoord run\\fR reads unless \\fB\\-\\-config\\fR names another.",
        ".SH SEE ALSO",
        "\\fBmemcoord\\fR(8)",
    ]
    return "\n".join(lines) + "\n"


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    pages = {"memcoord.8": memcoord_8(), "memcoord.toml.5": memcoord_toml_5()}
    paths = []
    for name, text in pages.items():
        (out_dir / name).write_text(text, encoding="utf-8")
        paths.append(out_dir / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m memcoord.buildtime.manpage OUTDIR", file=sys.stderr)
        return 64
    for path in write(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
