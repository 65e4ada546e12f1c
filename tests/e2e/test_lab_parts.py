"""The lab's parts on the host, without booting anything: the hog binary, the image, the disk, the host hog.

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
from lab.hosthog import HostHog
from lab.image import VIRTIO_MODULES, GuestImage, build_image, compile_hog, shared_disk
from lab.lab import domain_xml
from memcoord.hypervisor.domain_settings import parse_domain_xml


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


def test_initramfs_loads_the_disk_driver_after_virtio_pci() -> None:
    """virtio_blk needs virtio_pci's bus; /init loads the modules in VIRTIO_MODULES' order."""
    init = (Path(__file__).resolve().parents[2] / "lab" / "guest" / "init").read_text()
    loop = next(line for line in init.splitlines() if line.startswith("for m in "))
    order = loop.removeprefix("for m in ").removesuffix("; do").split()
    assert order == list(VIRTIO_MODULES)
    assert order.index("virtio_blk") > order.index("virtio_pci")


def test_shared_disk_is_sparse_readable_and_made_once(tmp_path: Path) -> None:
    disk = shared_disk(cache_dir=tmp_path, size_mib=64)
    st = disk.stat()
    assert st.st_size == 64 << 20
    assert st.st_blocks * 512 < 1 << 20, "the disk must be sparse (no blocks written)"
    assert st.st_mode & 0o004, "QEMU's user must be able to read it"
    assert shared_disk(cache_dir=tmp_path, size_mib=64) == disk


def test_only_guests_that_ask_for_it_get_the_readonly_disk(tmp_path: Path) -> None:
    image = GuestImage(tmp_path / "vmlinuz", tmp_path / "initramfs.gz", "test")
    plain = domain_xml("g1", image, tmp_path / "g1.sock", 2048, 512)
    with_disk = domain_xml("g2", image, tmp_path / "g2.sock", 2048, 512, disk=tmp_path / "d.raw")
    assert "<disk" not in plain
    assert f"<source file='{tmp_path / 'd.raw'}'/>" in with_disk
    assert "<readonly/>" in with_disk and "bus='virtio'" in with_disk


def test_only_guests_that_ask_for_it_get_a_balloon_that_deflates_on_oom(tmp_path: Path) -> None:
    image = GuestImage(tmp_path / "vmlinuz", tmp_path / "initramfs.gz", "test")
    plain = domain_xml("g1", image, tmp_path / "g1.sock", 2048, 512)
    deflating = domain_xml("g2", image, tmp_path / "g2.sock", 2048, 512, autodeflate=True)
    # As memcoord reads a definition, so the lab's option is the one memcoord acts on.
    assert parse_domain_xml("g1", plain).settings.deflate_on_oom is False
    assert parse_domain_xml("g2", deflating).settings.deflate_on_oom is True
    assert "<stats period='1'/>" in deflating


def test_host_hog_takes_its_memory_and_gives_it_back_when_stopped(tmp_path: Path) -> None:
    if shutil.which("gcc") is None or not Path("/bin/busybox").exists():
        pytest.skip("gcc or busybox-static missing")
    psutil = pytest.importorskip("psutil")
    image = build_image(cache_dir=tmp_path)
    size_mib = 256
    with HostHog(size_mib, image=image) as hog:
        assert hog.alive()
        rss_mib = psutil.Process(hog.proc.pid).memory_info().rss / 2**20
        assert rss_mib >= size_mib, f"the host hog holds only {rss_mib:.0f} MiB"
    assert not hog.alive()
    assert hog.proc.returncode is not None
