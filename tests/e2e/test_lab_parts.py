"""The lab's guest-side parts on the host, without booting anything: the hog binary and the image.

These run in seconds and pin what the real scenarios rely on: the hog's pacing and its progress
lines (the console parser reads them), and an initramfs with everything /init uses.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lab.console import HOG_HOLD_RE, HOG_MIB_RE
from lab.image import VIRTIO_MODULES, build_image, compile_hog


@pytest.fixture(scope="module")
def hog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing")
    out = tmp_path_factory.mktemp("hog") / "hog"
    compile_hog(out)
    return out


def test_hog_hold_mode_grows_to_size_holds_then_frees_and_exits(hog: Path) -> None:
    t0 = time.monotonic()
    done = subprocess.run([str(hog), "hold", "32", "1", "100"], capture_output=True, text=True, timeout=30)
    took_s = time.monotonic() - t0
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done
    assert lines[0].startswith("hog: start ")
    assert [int(m.group(1)) for line in lines if (m := HOG_MIB_RE.fullmatch(line))] == [16, 32]
    assert any(HOG_HOLD_RE.fullmatch(line) for line in lines)
    assert lines[-2:] == ["hog: freed 32 MiB", "hog: exit 0"]
    assert took_s >= 1.0, "it must hold for HOLD_S before exiting"


def test_hog_paces_itself_at_one_page_per_page_us(hog: Path) -> None:
    """64 MiB at 200 us per 4 KiB page (20 MiB/s) takes about 3.2 s, not as fast as the CPU allows."""
    proc = subprocess.Popen([str(hog), "hold", "64", "0", "200"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        t0 = time.monotonic()
        for line in proc.stdout:
            if line.startswith("hog: holding"):
                break
        took_s = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    assert 3.0 <= took_s <= 6.0, f"64 MiB at 20 MiB/s took {took_s:.2f} s"


def test_hog_rejects_bad_usage(hog: Path) -> None:
    done = subprocess.run([str(hog), "hold"], capture_output=True, text=True, timeout=5)
    assert done.returncode == 2 and "usage" in done.stderr


def test_initramfs_holds_init_busybox_hog_modules_and_console(tmp_path: Path) -> None:
    if shutil.which("cpio") is None or not Path("/bin/busybox").exists():
        pytest.skip("cpio or busybox-static missing")
    image = build_image(cache_dir=tmp_path)
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=gzip.decompress(image.initrd.read_bytes()), capture_output=True, check=True
    ).stdout.decode()
    names = set(listing.split())
    assert {"init", "bin/busybox", "bin/hog", "dev/console"} <= names
    assert {f"lib/modules/{m}.ko" for m in VIRTIO_MODULES} <= names
    # QEMU runs as libvirt-qemu and must be able to read both files.
    assert image.kernel.stat().st_mode & 0o004 and image.initrd.stat().st_mode & 0o004
    # A second build with the same inputs is the cached one.
    assert build_image(cache_dir=tmp_path) == image
