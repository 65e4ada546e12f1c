"""The repository the tests run in, and what its files say."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def changelog_releases() -> list[tuple[str, str]]:
    """(version, date) of each release heading in CHANGELOG.md, newest first ("## [0.3.0] - 2026-11-28")."""
    text = (REPO / "CHANGELOG.md").read_text()
    return re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", text, re.MULTILINE)
