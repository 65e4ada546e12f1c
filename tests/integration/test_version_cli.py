"""`memcoord --version` as the real CLI agrees with the package."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import memcoord
from tests.helpers.repo import REPO, changelog_releases


def test_version_agrees_everywhere() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    cli = subprocess.run(
        [sys.executable, "-m", "memcoord.cli", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    newest_changelog = changelog_releases()[0][0]
    debian_first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    m = re.fullmatch(r"memcoord \(([^)]+)\) \w+; urgency=\w+", debian_first)
    assert m, debian_first
    versions = {
        "memcoord.__version__": memcoord.__version__,
        "memcoord --version": cli.removeprefix("memcoord "),
        "pyproject.toml": pyproject,
        "CHANGELOG.md": newest_changelog,
        "debian/changelog": m.group(1),
    }
    assert len(set(versions.values())) == 1, versions
