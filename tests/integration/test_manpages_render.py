"""memcoord(8) and memcoord.toml(5) render with groff and man without warnings, their examples as example blocks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from memcoord.buildtime import manpage
from memcoord.hypervisor.domain_settings import NAMESPACE


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("man")
    manpage.write(out)
    return {"8": out / "memcoord.8", "5": out / "memcoord.toml.5"}


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
