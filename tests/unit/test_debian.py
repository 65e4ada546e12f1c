"""debian/ (Debian 13) and debian/bookworm/ (Debian 12) stay in step with the roots that build and test them
(lab/debroot.py): a Build-Depends the root lacks would fail `make deb RELEASE=...` only in a fresh cache, and a
runtime dependency the Debian 13 root lacks would make the offline install test fetch nothing and fail."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab import debroot

REPO = Path(__file__).resolve().parents[2]
CONTROL = {"trixie": REPO / "debian" / "control", "bookworm": REPO / "debian" / "bookworm" / "control"}
# Virtual build dependencies and the package that provides each.
PROVIDED_BY = {"debhelper-compat": "debhelper", "dh-sequence-python3": "dh-python"}


def relation(control: Path, name: str) -> list[str]:
    """The package names of a relationship field (versions, substitutions and comments dropped)."""
    lines = [line for line in control.read_text().splitlines() if not line.startswith("#")]
    text = "\n".join(lines)
    m = re.search(rf"^{name}:(.*(?:\n[ \t].*)*)", text, re.MULTILINE)
    assert m, f"{control}: no {name}"
    names = [re.sub(r"\(.*?\)|\[.*?\]", "", part).strip() for part in m.group(1).split(",")]
    return [n for n in names if n and not n.startswith("${")]


@pytest.mark.parametrize("release", list(CONTROL))
def test_the_build_root_has_every_build_dependency(release: str) -> None:
    wanted = {PROVIDED_BY.get(n, n) for n in relation(CONTROL[release], "Build-Depends")}
    assert wanted <= set(debroot.BUILD_ROOTS[release]), wanted - set(debroot.BUILD_ROOTS[release])


def test_the_debian_13_root_has_every_runtime_dependency() -> None:
    """The offline install in tests/system/test_deb.py finds each dependency already there, as on a KVM host."""
    depends = set(relation(CONTROL["trixie"], "Depends")) - {"procps"}  # procps: in every root (debroot)
    assert depends <= set(debroot.TRIXIE), depends - set(debroot.TRIXIE)


def test_the_overlay_replaces_only_files_debian_has_or_needs() -> None:
    """debian/bookworm/ holds what differs; build-deb puts it over debian/. A file there that debian/ also has
    must differ (else it is a copy to keep in step by hand)."""
    for path in (REPO / "debian" / "bookworm").iterdir():
        twin = REPO / "debian" / path.name
        assert not twin.exists() or twin.read_bytes() != path.read_bytes(), f"{path} is the same as {twin}"
