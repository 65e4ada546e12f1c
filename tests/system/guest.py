"""A tiny real QEMU guest for the system tests: busybox initramfs, virtio balloon, a shell on a serial socket.

Used until the lab package (branch `lab`) offers the same; it only needs what LAB-NOTES lists as installed:
the host kernel, busybox-static, cpio, libvirtd with QEMU (software emulation: KVM guests hang here).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt

URI = "qemu:///system"
# insmod order matters ("unknown symbol" otherwise), see LAB-NOTES.
MODULES = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_balloon",
]
INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {modules}; do insmod /lib/modules/$m.ko; done
echo MCSYS-GUEST-UP > /dev/ttyS0
while true; do setsid sh -c 'exec sh </dev/ttyS0 >/dev/ttyS0 2>&1'; done
"""


def kernel_version() -> str:
    """The version of the newest kernel in /boot that has its modules installed."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    for k in reversed(kernels):
        ver = k.removeprefix("/boot/vmlinuz-")
        if Path(f"/lib/modules/{ver}/kernel/drivers/virtio/virtio_balloon.ko").exists():
            return ver
    raise RuntimeError("no /boot/vmlinuz-* with virtio modules: apt-get install linux-image-amd64")


def build_boot_files(cache: Path) -> tuple[Path, Path]:
    """Build (once) the kernel copy and the busybox initramfs under `cache`; return (kernel, initrd)."""
    ver = kernel_version()
    cache.mkdir(parents=True, exist_ok=True)
    kernel, initrd = cache / f"vmlinuz-{ver}", cache / f"mcsys-initrd-{ver}.cpio"
    if kernel.exists() and initrd.exists():
        return kernel, initrd
    busybox = shutil.which("busybox") or "/bin/busybox"
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "proc", "sys", "dev", "lib/modules", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(busybox, root / "bin/busybox")
        for applet in ("sh", "mount", "insmod", "setsid", "dd", "rm", "cat", "echo", "free", "sleep"):
            (root / "bin" / applet).symlink_to("busybox")
        moddir = Path(f"/lib/modules/{ver}/kernel/drivers/virtio")
        for m in MODULES:
            shutil.copy(moddir / f"{m}.ko", root / "lib/modules" / f"{m}.ko")
        init = root / "init"
        init.write_text(INIT.format(modules=" ".join(MODULES)))
        init.chmod(0o755)
        files = subprocess.run(
            ["find", ".", "-print0"], cwd=root, check=True, capture_output=True
        ).stdout
        cpio = subprocess.run(
            ["cpio", "--null", "-o", "-H", "newc", "--quiet"],
            cwd=root, input=files, check=True, capture_output=True,
        ).stdout
        tmp_initrd = initrd.with_suffix(".tmp")
        tmp_initrd.write_bytes(cpio)
        shutil.copy(f"/boot/vmlinuz-{ver}", kernel)
        tmp_initrd.rename(initrd)
    kernel.chmod(0o644)
    initrd.chmod(0o644)
    return kernel, initrd


def domain_xml(name: str, kernel: Path, initrd: Path, serial: Path, max_mib: int, cur_mib: int) -> str:
    """Libvirt XML for a transient software-emulated guest with a virtio balloon reporting stats every second."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{max_mib}</memory>
  <currentMemory unit='MiB'>{cur_mib}</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <serial type='unix'><source mode='bind' path='{serial}'/><target port='0'/></serial>
    <memballoon model='virtio'><stats period='1'/></memballoon>
  </devices>
</domain>"""


class SerialShell:
    """A shell in the guest reached through the serial unix socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""
        self.seq = 0

    def read_until(self, pattern: bytes, timeout: float) -> re.Match[bytes]:
        """Read from the console until `pattern` (a regex) matches; consume through the match."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"guest console: no {pattern!r} within {timeout}s; tail: {self.buf[-500:]!r}")
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError("guest console closed")
            self.buf += chunk

    def run(self, cmd: str, timeout: float = 60) -> tuple[int, str]:
        """Run a shell command in the guest; return (exit status, output)."""
        self.seq += 1
        self.sock.sendall(f'{cmd}; echo "__DONE"_{self.seq}_$?\n'.encode())
        m = self.read_until(rb"(?s)(.*?)__DONE_%d_(\d+)" % self.seq, timeout)
        return int(m.group(2)), m.group(1).decode(errors="replace")

    def wait_ready(self, timeout: float = 120) -> None:
        """Wait until the shell answers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                code, _ = self.run("true", timeout=3)
                if code == 0:
                    return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def close(self) -> None:
        """Close the socket (the guest shell keeps running)."""
        self.sock.close()


@dataclass
class Guest:
    """A running transient guest on the host's libvirtd."""

    name: str
    serial_path: Path
    shell: SerialShell | None = None

    def dom(self) -> libvirt.virDomain:
        """A fresh handle (the connection may have been lost when libvirtd restarted)."""
        return libvirt.open(URI).lookupByName(self.name)

    def balloon(self) -> dict[str, int]:
        """balloon.* stats (KiB) as libvirt reports them, key without the prefix."""
        conn = libvirt.open(URI)
        try:
            dom = conn.lookupByName(self.name)
            ((_, stats),) = conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_BALLOON)
        finally:
            conn.close()
        return {k.removeprefix("balloon."): v for k, v in stats.items()}

    def current_kib(self) -> int:
        """The balloon target libvirt holds for the guest (what setMemory last set), in KiB."""
        return self.balloon()["current"]

    def set_memory_mib(self, mib: int) -> None:
        """Set the balloon target (host side)."""
        conn = libvirt.open(URI)
        try:
            conn.lookupByName(self.name).setMemory(mib * 1024)
        finally:
            conn.close()

    def wait_settled(self, timeout: float = 60) -> dict[str, int]:
        """Wait until the guest's stats are fresh and its used memory stops moving; return the stats."""
        deadline = time.monotonic() + timeout
        last: int | None = None
        while True:
            b = self.balloon()
            unused = b.get("unused")
            if unused is not None and last is not None and abs(unused - last) < 1024:
                return b
            last = unused
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: stats not settled: {b}")
            time.sleep(1.5)

    def fill_mib(self, mib: int) -> None:
        """Hold `mib` MiB more in the guest's RAM (a file in its tmpfs root; no swap, so it stays)."""
        assert self.shell is not None
        self.seq_file = getattr(self, "seq_file", 0) + 1
        code, out = self.shell.run(f"dd if=/dev/zero of=/tmp/fill{self.seq_file} bs=1M count={mib} 2>&1")
        assert code == 0, out

    def release(self) -> None:
        """Free everything fill_mib took."""
        assert self.shell is not None
        self.shell.run("rm -f /tmp/fill*")


def start_guest(name: str, cache: Path, max_mib: int = 512, cur_mib: int = 256) -> Guest:
    """Start (replacing any leftover of the same name) a transient guest and wait for its shell and balloon."""
    kernel, initrd = build_boot_files(cache)
    sockdir = cache / "serial"
    sockdir.mkdir(exist_ok=True)
    shutil.chown(sockdir, "libvirt-qemu")
    serial = sockdir / f"{name}.sock"
    conn = libvirt.open(URI)
    try:
        destroy_guest(name)
        if serial.exists():
            serial.unlink()
        conn.createXML(domain_xml(name, kernel, initrd, serial, max_mib, cur_mib), 0)
    finally:
        conn.close()
    guest = Guest(name, serial)
    deadline = time.monotonic() + 30
    while not serial.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: no serial socket {serial}")
        time.sleep(0.2)
    guest.shell = SerialShell(serial)
    guest.shell.wait_ready()
    # The balloon starts at the max and falls to currentMemory once the driver is in (LAB-NOTES).
    deadline = time.monotonic() + 60
    while abs(guest.balloon()["current"] - cur_mib * 1024) > 1024 or "unused" not in guest.balloon():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: balloon did not reach {cur_mib} MiB: {guest.balloon()}")
        time.sleep(0.5)
    guest.wait_settled()
    return guest


def destroy_guest(name: str) -> None:
    """Destroy a guest if it runs (transient guests vanish with it)."""
    conn = libvirt.open(URI)
    try:
        try:
            conn.lookupByName(name).destroy()
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    finally:
        conn.close()


if __name__ == "__main__":  # manual check: python3 tests/system/guest.py
    g = start_guest("mcsys-probe", Path(os.environ.get("MCSYS_CACHE", "/var/cache/memcoord-test")) / "guest")
    print(g.balloon())
    g.fill_mib(100)
    time.sleep(3)
    print(g.balloon())
    destroy_guest("mcsys-probe")
