"""Build the lab's tiny guest image: Debian's kernel + a busybox initramfs + virtio balloon and disk + the hog.

The image is cached under a key derived from every input, so a test session or a demo
builds it once and later runs reuse it (a build takes about a second). Beside it lies the
sparse raw file page-cache guests read as their readonly virtio disk.

The cache is outside the clone (/var/cache/memcoord-lab, or MEMCOORD_LAB_CACHE): QEMU runs as libvirt-qemu and
opens these files itself, and a clone in root's home (/root is 0700 on Debian) is closed to that user.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

GUEST_SRC_DIR = Path(__file__).resolve().parent / "guest"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = Path(os.environ.get("MEMCOORD_LAB_CACHE", "/var/cache/memcoord-lab"))
QEMU_USER = "libvirt-qemu"
BUSYBOX = Path("/bin/busybox")
# insmod order that resolves the symbols (LAB-NOTES); any other order fails with "unknown symbol".
# virtio_blk (a readonly disk whose reads fill the guest's page cache) needs virtio_pci before it.
VIRTIO_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_balloon",
    "virtio_blk",
)
# Where each module lives under /lib/modules/<version>/kernel/ when not in drivers/virtio.
MODULE_DIRS = {"virtio_blk": "drivers/block"}
DISK_SIZE_MIB = 3072  # larger than any lab guest's max, so reading it keeps cycling the guest's cache


class ImageError(RuntimeError):
    """The host lacks something the guest image needs (kernel, modules, busybox, gcc)."""


@dataclass(frozen=True)
class GuestImage:
    """Paths of a built image; both files are world-readable so QEMU's user can open them."""

    kernel: Path
    initrd: Path
    kernel_version: str

    @property
    def hog(self) -> Path:
        """The static hog built for the initramfs; it runs on the host too (a host memory hog)."""
        return self.kernel.parent / "hog"


def find_kernel() -> tuple[Path, str]:
    """Pick the newest /boot/vmlinuz-* that has its modules installed (the running kernel may be foreign)."""
    candidates = []
    for path in sorted(glob.glob("/boot/vmlinuz-*")):
        version = path.removeprefix("/boot/vmlinuz-")
        if Path(f"/lib/modules/{version}/kernel/drivers/virtio").is_dir():
            candidates.append((Path(path), version))
    if not candidates:
        raise ImageError(
            "no /boot/vmlinuz-* with /lib/modules/<version>/kernel/drivers/virtio: install linux-image-amd64"
        )
    return candidates[-1]


def _module_path(version: str, name: str) -> Path:
    base = Path(f"/lib/modules/{version}/kernel") / MODULE_DIRS.get(name, "drivers/virtio")
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if (base / (name + suffix)).exists():
            return base / (name + suffix)
    raise ImageError(f"module {name} not found in {base}")


def _decompressed_module(path: Path) -> bytes:
    """busybox insmod wants a plain .ko; Debian 12 ships them plain, newer kernels compress them."""
    if path.suffix == ".ko":
        return path.read_bytes()
    if path.suffix == ".xz":
        import lzma

        return lzma.decompress(path.read_bytes())
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout


def _newc_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0) -> bytes:
    """One cpio "newc" record. Written by hand so device nodes need no mknod (and no root) at build time."""
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    header = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    out = header + name_b
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def build_initramfs(version: str, hog_binary: bytes) -> bytes:
    """A gzip'd newc archive: /init, busybox, the hog, the virtio modules, /dev/console."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []
    for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"):
        entries.append((d, 0o040755, b"", (0, 0)))
    # The kernel opens /dev/console for PID 1 before init can mount devtmpfs.
    entries.append(("dev/console", 0o020600, b"", (5, 1)))
    entries.append(("init", 0o100755, (GUEST_SRC_DIR / "init").read_bytes(), (0, 0)))
    entries.append(("bin/busybox", 0o100755, BUSYBOX.read_bytes(), (0, 0)))
    entries.append(("bin/hog", 0o100755, hog_binary, (0, 0)))
    for mod in VIRTIO_MODULES:
        data = _decompressed_module(_module_path(version, mod))
        entries.append((f"lib/modules/{mod}.ko", 0o100644, data, (0, 0)))
    buf = io.BytesIO()
    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        buf.write(_newc_entry(name, mode, data, rdev, ino))
    buf.write(_newc_entry("TRAILER!!!", 0))
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def compile_hog(out: Path) -> None:
    """Static, so the initramfs needs no libc."""
    src = GUEST_SRC_DIR / "hog.c"
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise ImageError("gcc not found: install gcc libc6-dev")
    subprocess.run([cc, "-static", "-O2", "-Wall", "-o", str(out), str(src)], check=True)


def _cache_key(kernel: Path, version: str) -> str:
    h = hashlib.sha256()
    for path in (GUEST_SRC_DIR / "hog.c", GUEST_SRC_DIR / "init", Path(__file__)):
        h.update(path.read_bytes())
    for path in (kernel, BUSYBOX):
        st = path.stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(version.encode())
    return h.hexdigest()[:16]


def build_image(cache_dir: Path = DEFAULT_CACHE_DIR) -> GuestImage:
    """Build (or reuse) the guest image; safe to call from several processes at once."""
    if not BUSYBOX.exists():
        raise ImageError(f"{BUSYBOX} missing: install busybox-static")
    kernel_src, version = find_kernel()
    target = cache_dir / _cache_key(kernel_src, version)
    image = GuestImage(target / "vmlinuz", target / "initramfs.gz", version)
    if image.kernel.exists() and image.initrd.exists():
        return image
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".build-"))
    try:
        compile_hog(tmp / "hog")
        (tmp / "initramfs.gz").write_bytes(build_initramfs(version, (tmp / "hog").read_bytes()))
        shutil.copyfile(kernel_src, tmp / "vmlinuz")
        for f in ("vmlinuz", "initramfs.gz"):
            os.chmod(tmp / f, 0o644)
        os.chmod(tmp / "hog", 0o755)  # lab.hosthog runs it on the host
        os.chmod(tmp, 0o755)
        try:
            tmp.rename(target)  # atomic publish; a concurrent builder may have won the race
        except OSError:
            if not image.initrd.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _let_qemu_in(cache_dir)
    return image


def qemu_cannot_read(path: Path, user: str = QEMU_USER) -> str | None:
    """Why QEMU's user cannot read `path` (None if it can, or if there is no such user to ask about).

    Asked of the system as that user (runuser test -r: modes, ACLs and all), then explained by the first
    directory on the way that user may not enter."""
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    if os.geteuid() != 0 or not shutil.which("runuser"):
        return None
    if subprocess.run(["runuser", "-u", user, "--", "test", "-r", str(path)], check=False).returncode == 0:
        return None
    for directory in reversed(path.resolve().parents):
        if subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(directory)], check=False).returncode:
            mode = directory.stat().st_mode & 0o7777
            return f"{directory} is mode {mode:04o}, closed to {user}"
    return f"{path} is not readable by {user}"


def check_qemu_can_read(*paths: Path) -> None:
    """Raise ImageError in one line, with the fix, when QEMU will not be able to open a file it is given."""
    for path in paths:
        why = qemu_cannot_read(path)
        if why:
            raise ImageError(
                f"QEMU (user {QEMU_USER}) cannot read {path}: {why}. Fix: keep the lab cache where it can, "
                f"MEMCOORD_LAB_CACHE=/var/cache/memcoord-lab (the default), or chmod o+x the directory"
            )


def _let_qemu_in(cache_dir: Path) -> None:
    """QEMU runs as libvirt-qemu: every directory on the way must be traversable."""
    for d in (cache_dir, cache_dir.parent):
        if d.exists():
            d.chmod(d.stat().st_mode | 0o055)


def shared_disk(cache_dir: Path = DEFAULT_CACHE_DIR, size_mib: int = DISK_SIZE_MIB) -> Path:
    """A sparse raw file (all zeros, no blocks on disk) that page-cache guests attach readonly.

    One file serves every guest (readonly, so QEMU's shared locks allow that). It lives beside the
    cached image, where QEMU's user can read it; created once, atomically, safe against a concurrent
    creator.
    """
    path = cache_dir / f"readonly-disk-{size_mib}m.raw"
    if path.exists() and path.stat().st_size == size_mib << 20:
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".disk-")
    try:
        os.ftruncate(fd, size_mib << 20)
        os.fchmod(fd, 0o644)
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _let_qemu_in(cache_dir)
    return path
