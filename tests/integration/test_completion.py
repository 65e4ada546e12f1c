"""The generated bash completion, run by bash itself: it registers for `memcoord` and completes every subcommand,
every option of each (from the real parser), choices, and file names where an argument is a path."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from memcoord import cli
from memcoord.buildtime.completion import script


@pytest.fixture(scope="module")
def completion_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "memcoord"
    path.write_text(script())
    return path


def complete(completion_file: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for the command line `words` (the last word is the one being completed)."""
    array = " ".join(f"'{w}'" for w in words)
    bash = (
        f"source '{completion_file}'\n"
        f"COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE='{' '.join(words)}'; COMP_POINT=${{#COMP_LINE}}\n"
        "_memcoord\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run(["bash", "--norc", "-c", bash], capture_output=True, text=True, cwd=cwd, check=True)
    return [line for line in r.stdout.splitlines() if line]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_registered_for_memcoord(completion_file: Path) -> None:
    r = subprocess.run(
        ["bash", "--norc", "-c", f"source '{completion_file}'; complete -p memcoord"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip() == "complete -F _memcoord memcoord"


def test_every_subcommand(completion_file: Path) -> None:
    offered = complete(completion_file, "memcoord", "")
    assert set(subparsers()) <= set(offered), offered
    assert complete(completion_file, "memcoord", "chec") == ["check-config"]


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_every_option_of_every_subcommand(completion_file: Path, command: str) -> None:
    options = {s for a in subparsers()[command]._actions for s in a.option_strings}
    offered = set(complete(completion_file, "memcoord", command, "-"))
    assert options and options == offered, (options, offered)


def test_choices_and_paths(completion_file: Path, tmp_path: Path) -> None:
    # Choices: on a subcommand this test adds (the real parser may have none today).
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    extra = action.add_parser("choosy-test", help="test")
    extra.add_argument("--mode", choices=["fast", "slow"])
    extended = tmp_path / "extended"
    extended.write_text(script(parser))
    assert complete(extended, "memcoord", "choosy-test", "--mode", "") == ["fast", "slow"]
    assert complete(extended, "memcoord", "choosy-test", "--mode", "s") == ["slow"]
    (tmp_path / "hosts.toml").write_text("")
    (tmp_path / "other").write_text("")
    assert complete(completion_file, "memcoord", "check-config", "ho", cwd=tmp_path) == ["hosts.toml"]
    assert complete(completion_file, "memcoord", "run", "--config", "ho", cwd=tmp_path) == ["hosts.toml"]
    # An option after the subcommand does not hide it: still the run options.
    assert "--dry-run" in complete(completion_file, "memcoord", "run", "--verbose", "--d")
    # A value that is a number gets no file names.
    assert complete(completion_file, "memcoord", "run", "--interval", "", cwd=tmp_path) == []
