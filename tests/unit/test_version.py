"""One version everywhere: `memcoord --version`, pyproject.toml, CHANGELOG.md's newest release, debian/changelog."""

from __future__ import annotations

from datetime import date

from tests.helpers.repo import REPO, changelog_releases


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
