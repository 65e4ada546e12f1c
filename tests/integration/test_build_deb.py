"""packaging/build-deb's copy of the tree for each release (git ls-files, dpkg-parsechangelog: processes, hence
here and not in tests/unit/test_debian.py): Debian 12's overlay over debian/, Debian 13's debian/ as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
