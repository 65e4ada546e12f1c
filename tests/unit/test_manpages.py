"""memcoord(8) and memcoord.toml(5) cover the code: every subcommand and option of the real parser, every key of the
real config model (walked here independently of the generator), and both render without a groff warning.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from memcoord import cli
from memcoord.buildtime import manpage
from memcoord.buildtime.completion import script
from memcoord.core.config import Config
from memcoord.hypervisor.domain_settings import NAMESPACE


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("man")
    manpage.write(out)
    return {"8": out / "memcoord.8", "5": out / "memcoord.toml.5"}


def plain(roff: str) -> str:
    """The roff source with its escapes for - and \\ undone, for plain substring checks."""
    return roff.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")


def blocks(roff: str, macro: str) -> dict[str, str]:
    """The text under each `.SH`/`.SS` heading, by heading."""
    out: dict[str, str] = {}
    parts = re.split(rf"^\{macro} (.+)$", roff, flags=re.MULTILINE)
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        out[title] = re.split(r"^\.SH ", body, flags=re.MULTILINE)[0]
    return out


def parser_commands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Every subcommand with its option strings and positional names, straight from argparse."""
    (sub_action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {
        name: [s for a in sub._actions for s in (a.option_strings or [a.dest])]
        for name, sub in sub_action.choices.items()
    }


def model_keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str | None]]:
    """(section, key, description) of every leaf field, walking nested models and dict-of-model tables."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += model_keys(ann, f"{prefix}{name}.")
        elif typing.get_origin(ann) is dict and issubclass(typing.get_args(ann)[1], BaseModel):
            out += model_keys(typing.get_args(ann)[1], f'{prefix}{name}."NAME".')
        else:
            out.append((prefix.rstrip("."), name, field.description))
    return out


def test_every_subcommand_and_option_is_in_memcoord_8(pages: dict[str, Path]) -> None:
    roff = plain(pages["8"].read_text())
    commands = blocks(roff, ".SS")
    expected = parser_commands(cli.build_parser())
    assert len(expected) >= 7, expected
    missing = [name for name in expected if name not in commands]
    assert not missing, f"subcommands missing from memcoord(8): {missing}"
    for name, options in expected.items():
        absent = [o for o in options if o not in commands[name]]
        assert not absent, f"memcoord {name}: {absent} missing from memcoord(8)"
    for heading in ("EXIT STATUS", "SIGNALS", "ENVIRONMENT", "FILES", "SEE ALSO"):
        assert f".SH {heading}" in roff, heading
    for code in (0, 64, 66, 69, 78):
        assert f"\\fB{code}\\fR" in roff, code
    for env in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM"):
        assert env in blocks(roff, ".SH")["ENVIRONMENT"], env
    for sig in ("SIGHUP", "SIGTERM"):
        assert sig in blocks(roff, ".SH")["SIGNALS"], sig


def test_a_new_subcommand_appears_without_editing_the_generator() -> None:
    """As `plan` and `restore` arrive on other branches: a subcommand added to the parser is in the page and in
    the completion, with its options."""
    parser = cli.build_parser()
    (sub_action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    new = sub_action.add_parser("frobnicate-test", help="a subcommand this test adds")
    new.add_argument("--json", action="store_true", help="as JSON")
    new.add_argument("--to", type=int, metavar="MIB", help="the size")
    new.add_argument("domain", nargs="*")
    text = plain(manpage.memcoord_8(parser))
    block = blocks(text, ".SS")["frobnicate-test"]
    assert "A subcommand this test adds." in block
    assert "--json" in block and "--to" in block and "MIB" in block and "domain" in block
    completion = script(parser)
    assert "frobnicate-test)" in completion and "--json --to" in completion


def test_every_config_key_is_described_and_in_memcoord_toml_5(pages: dict[str, Path]) -> None:
    roff = plain(pages["5"].read_text())
    sections = blocks(roff, ".SH")
    keys = model_keys(Config)
    assert len(keys) >= 30, keys
    undescribed = [f"{s}.{k}" for s, k, d in keys if not d]
    assert not undescribed, f"config keys without Field(description=...): {undescribed}"
    for section, key, description in keys:
        block = sections.get(f"[{section}]", "")
        assert f"\\fB{key}\\fR (" in block, f"{section}.{key} missing from memcoord.toml(5)"
        assert plain(description or "").split(".")[0] in block, f"{section}.{key}: description not in the page"


def test_key_facts_come_from_the_model(pages: dict[str, Path]) -> None:
    """Type, unit, bounds and default as the model has them (two keys checked by hand)."""
    sections = blocks(plain(pages["5"].read_text()), ".SH")
    assert "\\fBinterval_s\\fR (number; seconds; > 0, <= 3600; default 1.0)" in sections["[loop]"]
    assert "\\fBmin_available_mib\\fR (integer; MiB; >= 0; default 1024)" in sections["[host]"]
    assert '\\fBdomains\\fR (array of strings; default ["*"])' in sections["[libvirt]"]


@pytest.mark.parametrize("page", ["8", "5"])
def test_pages_render_without_warnings(pages: dict[str, Path], page: str) -> None:
    groff = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(pages[page])], capture_output=True, text=True, check=False
    )
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr
    assert shutil.which("man"), "man-db is needed: apt-get install man-db"
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8")
    man = subprocess.run(
        ["man", "--warnings", "-l", str(pages[page])], capture_output=True, text=True, env=env, check=False
    )
    assert man.returncode == 0 and man.stderr == "", man.stderr
    assert ("MEMCOORD(8)" if page == "8" else "MEMCOORD.TOML(5)") in man.stdout


def rendered(page: Path) -> str:
    """The page as `man -l` shows it, 100 columns wide."""
    env = dict(os.environ, MANWIDTH="100", LANG="C.UTF-8")
    man = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, env=env, check=True)
    return man.stdout


def indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def test_examples_are_example_blocks(pages: dict[str, Path]) -> None:
    """Examples in the pages stand on their own lines, indented below their prose, as written; no Markdown
    backticks reach the reader (a docstring's `code` is bold, its indented lines an example block)."""
    toml5, man8 = rendered(pages["5"]), rendered(pages["8"])
    assert "`" not in toml5 and "`" not in man8
    lines = toml5.splitlines()
    prose = next(i for i, line in enumerate(lines) if "may travel with the VM" in line)
    block = [
        "<metadata>",
        f'  <memcoord:settings xmlns:memcoord="{NAMESPACE}">',
        "    <memcoord:min_mib>1024</memcoord:min_mib>",
        "    <memcoord:max_mib>4096</memcoord:max_mib>",
        "    <memcoord:enabled>true</memcoord:enabled>",
        "  </memcoord:settings>",
        "</metadata>",
    ]
    start = next(i for i in range(prose, len(lines)) if lines[i].strip() == "<metadata>")
    shown = lines[start : start + len(block)]
    base = indent(shown[0])
    assert [line[base:] for line in shown] == block, shown
    assert base > indent(lines[prose]), (lines[prose], shown[0])
    virsh = next(line for line in lines[start:] if line.lstrip().startswith("virsh metadata"))
    assert virsh.strip() == f"virsh metadata DOMAIN {NAMESPACE} --key memcoord \\", virsh
    assert indent(virsh) == base
    examples = man8.split("\nEXAMPLES\n", 1)[1].split("\nSEE ALSO\n", 1)[0].splitlines()
    for what, commands in manpage.EXAMPLES_8:
        assert " ".join(what.split()[:4]) in " ".join(" ".join(examples).split()), what
        for command in commands.splitlines():
            line = next((x for x in examples if x.strip() == command), None)
            assert line is not None and indent(line) > indent(examples[0]), (command, examples)
    assert len([x for x in examples if not x.strip()]) == len(manpage.EXAMPLES_8) - 1, examples
