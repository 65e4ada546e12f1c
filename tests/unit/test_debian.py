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


def build_deb_module():  # type: ignore[no-untyped-def]
    """packaging/build-deb (a script without .py) as a module."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("build_deb", str(REPO / "packaging" / "build-deb"))
    spec = importlib.util.spec_from_loader("build_deb", loader)
    assert spec
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("release", ["bookworm", "trixie"])
def test_build_deb_prepares_each_release(release: str, tmp_path: Path) -> None:
    """The copy build-deb builds from: Debian 12's files over debian/ (and a ~deb12 version with its own changelog
    entry), or debian/ as it is for Debian 13; debian/bookworm/ itself never ships."""
    build_deb = build_deb_module()
    tree = tmp_path / "memcoord"
    build_deb.copy_tree(tree)
    upstream = build_deb.changelog(tree, "Version")
    version = build_deb.prepare(tree, release, None)
    assert not (tree / "debian" / "bookworm").exists()
    control = (tree / "debian" / "control").read_text()
    first = (tree / "debian" / "changelog").read_text().splitlines()[0]
    if release == "bookworm":
        assert version == f"{upstream}~deb12" and first == f"memcoord ({version}) bookworm; urgency=medium"
        assert "dh-virtualenv" in control and "Architecture: amd64" in control
        # Reproducible, and newer than the entry before (lintian): the upstream entry's date and a second.
        assert int(build_deb.changelog(tree, "Timestamp")) == int(build_deb.changelog(REPO, "Timestamp")) + 1
    else:
        assert version == upstream and first.startswith(f"memcoord ({upstream}) ")
        assert "dh-sequence-python3" in control and "Architecture: all" in control
    for name in ("rules", "control", "copyright"):
        assert (tree / "debian" / name).exists(), name
