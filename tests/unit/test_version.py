"""One version everywhere: `memcoord --version`, pyproject.toml, CHANGELOG.md's newest release, debian/changelog."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

import memcoord

REPO = Path(__file__).resolve().parents[2]


def changelog_releases() -> list[tuple[str, str]]:
    """(version, date) of each release heading in CHANGELOG.md, newest first ("## [0.3.0] - 2026-11-28")."""
    text = (REPO / "CHANGELOG.md").read_text()
    return re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", text, re.MULTILINE)


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


def test_changelog_releases_are_dated_and_ordered() -> None:
    releases = changelog_releases()
    assert len(releases) >= 2, releases
    versions = [tuple(int(p) for p in v.split(".")) for v, _ in releases]
    dates = [date.fromisoformat(d) for _, d in releases]
    assert versions == sorted(versions, reverse=True), versions
    assert dates == sorted(dates, reverse=True), dates
    # debian/changelog's date is the newest release's.
    trailer = next(line for line in (REPO / "debian" / "changelog").read_text().splitlines() if line.startswith(" -- "))
    assert dates[0].strftime("%d %b %Y") in trailer, (trailer, dates[0])
