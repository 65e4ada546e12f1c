"""memcoord(8) and memcoord.toml(5) cover the code: every subcommand and option of the real parser, every key of the
real config model (walked here independently of the generator), and both render without a groff warning.
"""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from memcoord import cli
from memcoord.buildtime import manpage
from memcoord.buildtime.completion import script
from memcoord.core.config import Config


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
        shown = re.sub(r"`([^`]+)`", r"\\fB\1\\fR", description or "")  # a code span is bold on the page
        assert plain(shown).split(".")[0] in block, f"{section}.{key}: description not in the page"


def test_key_facts_come_from_the_model(pages: dict[str, Path]) -> None:
    """Type, unit, bounds and default as the model has them (two keys checked by hand)."""
    sections = blocks(plain(pages["5"].read_text()), ".SH")
    assert "\\fBinterval_s\\fR (number; seconds; > 0, <= 3600; default 1.0)" in sections["[loop]"]
    assert "\\fBmin_available_mib\\fR (integer; MiB; >= 0; default 1024)" in sections["[host]"]
    assert '\\fBdomains\\fR (array of strings; default ["*"])' in sections["[libvirt]"]
