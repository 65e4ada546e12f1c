"""README's commands from a clone in a 0700 directory (root's home on Debian): what QEMU (user libvirt-qemu) must
open lives outside the clone, a guest boots from it, and a cache that QEMU cannot reach fails in one line with the fix.

The clone is the repository's files (as `git clone` would have them) copied into mkdtemp() + chmod 700; every
command runs from the clone's own code, not from this tree's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.container import repo_files

REPO = Path(__file__).resolve().parents[2]
PREFIX = f"mc0700-{os.getpid()}-"


@pytest.fixture(scope="module")
def clone() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (runuser, qemu:///system)")
    home = Path(tempfile.mkdtemp(prefix="memcoord-home-"))  # /tmp is open to all; this directory is not
    home.chmod(0o700)
    dest = home / "memcoord"
    dest.mkdir()
    with tarfile.open(home / "repo.tar", "w") as tar:
        for f in repo_files(REPO):
            tar.add(REPO / f, arcname=f)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(home / "repo.tar")], check=True)
    yield dest
    shutil.rmtree(home, ignore_errors=True)


def in_clone(clone: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run Python code with the clone's lab package (cwd and sys.path are the clone)."""
    full_env = {k: v for k, v in os.environ.items() if k != "MEMCOORD_LAB_CACHE"} | env
    return subprocess.run(
        [sys.executable, "-c", code], cwd=clone, env=full_env, capture_output=True, text=True, timeout=600
    )


def qemu_can_read(path: str) -> bool:
    return subprocess.run(["runuser", "-u", "libvirt-qemu", "--", "test", "-r", path], check=False).returncode == 0


def test_image_is_outside_the_clone_and_readable_by_qemu(clone: Path) -> None:
    assert subprocess.run(["runuser", "-u", "libvirt-qemu", "--", "test", "-x", str(clone)]).returncode != 0
    r = in_clone(
        clone,
        "import lab.image as i; im = i.build_image(); print(i.__file__); print(im.kernel); print(im.initrd);"
        "print(i.shared_disk())",
    )
    assert r.returncode == 0, r.stderr
    module, *paths = r.stdout.split()
    assert module.startswith(str(clone)), module  # the clone's code ran
    for path in paths:
        assert not path.startswith(str(clone)), path
        assert qemu_can_read(path), f"libvirt-qemu cannot read {path}"


def test_unreachable_cache_fails_in_one_line_with_the_fix(clone: Path) -> None:
    """The demo's first step, with the cache pointed back into the clone (as it used to be)."""
    r = in_clone(clone, "import sys, lab.demo; sys.exit(lab.demo.main([]))", MEMCOORD_LAB_CACHE=str(clone / ".cache"))
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "cannot read" in lines[0] and f"{clone.parent} is mode 0700" in lines[0], lines[0]
    assert "MEMCOORD_LAB_CACHE=/var/cache/memcoord-lab" in lines[0], lines[0]
    assert "Traceback" not in r.stderr


@pytest.mark.real
def test_a_guest_boots_from_the_clone(clone: Path) -> None:
    """One tiny guest, booted by the clone's lab on the real libvirtd: its balloon reports (run under the QEMU lock)."""
    code = (
        "from lab.lab import Lab\n"
        f"with Lab(prefix={PREFIX!r}, n=1, max_mib=512, current_mib=384) as lab:\n"
        "    s = lab.balloon_stats()\n"
        f"    print(s[{PREFIX + '1'!r}]['balloon.current'])\n"
    )
    r = in_clone(clone, code)
    assert r.returncode == 0, r.stderr[-3000:]
    current_kib = int(r.stdout.split()[-1])
    assert current_kib > 0, r.stdout
