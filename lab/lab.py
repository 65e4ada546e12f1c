"""A lab of N tiny real QEMU guests with a virtio balloon, owned by one prefix.

Everything the lab touches is named `<prefix><i>`: other users of the same libvirtd (a CI job,
another engineer's system tests) keep their domains, and a crashed earlier run with the same
prefix is cleaned up on the next `up()`.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

import libvirt

from lab.console import Console, ConsoleError
from lab.image import GuestImage, build_image
from lab.libvirtd import ensure_libvirtd

DEFAULT_URI = "qemu:///system"
HogMode = Literal["grow", "hold"]


class LabError(RuntimeError):
    """The lab could not bring its guests to a measurable state."""


def _silence_libvirt_stderr() -> None:
    """libvirt prints every error it raises to stderr by default; we handle them as exceptions."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def domain_xml(
    name: str, image: GuestImage, console_sock: Path, max_mib: int, current_mib: int, stats_period_s: int = 1
) -> str:
    """One guest: software-emulated (KVM hangs on these hosts), 1 vCPU, balloon stats every second.

    on_reboot/on_crash destroy plus panic=-1 turn a dead guest kernel into a stopped domain the
    recorder sees, instead of a silently rebooting one.
    """
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{max_mib}</memory>
  <currentMemory unit='MiB'>{current_mib}</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(image.kernel))}</kernel>
    <initrd>{escape(str(image.initrd))}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='unix'>
      <source mode='bind' path='{escape(str(console_sock))}'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='virtio'><stats period='{stats_period_s}'/></memballoon>
  </devices>
</domain>
"""


@dataclass
class Guest:
    """A running lab guest: its libvirt domain and its console."""

    name: str
    domain: libvirt.virDomain
    console: Console
    max_mib: int
    current_mib: int


class Lab:
    """Boot `n` guests named `<prefix>1..n`; a context manager that always tears them down."""

    def __init__(
        self,
        prefix: str = "mclab-",
        n: int = 4,
        max_mib: int = 2048,
        current_mib: int = 512,
        uri: str = DEFAULT_URI,
        run_dir: Path | None = None,
        image: GuestImage | None = None,
        boot_timeout_s: float = 180.0,
    ) -> None:
        self.prefix = prefix
        self.n = n
        self.max_mib = max_mib
        self.current_mib = current_mib
        self.uri = uri
        self.image = image
        self.boot_timeout_s = boot_timeout_s
        self._own_run_dir = run_dir is None
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.conn: libvirt.virConnect | None = None
        self.guests: list[Guest] = []
        self._down_lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.n + 1)]

    @property
    def domain_glob(self) -> str:
        """The glob memcoord should manage so it sees exactly this lab's guests."""
        return f"{self.prefix}*"

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def guest(self, which: int | str) -> Guest:
        """A guest by 1-based index or by name."""
        if isinstance(which, int):
            return self.guests[which - 1]
        for g in self.guests:
            if g.name == which:
                return g
        raise KeyError(which)

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self) -> Lab:
        """Define and start the guests, then wait until their balloons are measurable."""
        _silence_libvirt_stderr()
        ensure_libvirtd()
        if self.image is None:
            self.image = build_image()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o777)  # QEMU (libvirt-qemu) creates the console sockets here
        atexit.register(self.down)
        try:
            self.conn = libvirt.open(self.uri)
            for name in self.names:
                self._remove_domain(name)
            for name in self.names:
                self._start_guest(name)
            self._wait_measurable()
        except BaseException:
            self.down()
            raise
        return self

    def _start_guest(self, name: str) -> None:
        assert self.conn is not None and self.image is not None
        sock = self.run_dir / f"{name}.sock"
        xml = domain_xml(name, self.image, sock, self.max_mib, self.current_mib)
        dom = self.conn.defineXML(xml)
        console = Console(sock, self.run_dir / f"{name}.console.log")
        # Append before create() so down() cleans up even if the start fails half-way.
        self.guests.append(Guest(name, dom, console, self.max_mib, self.current_mib))
        dom.create()
        console.connect()

    def _wait_measurable(self) -> None:
        """Ready means: the shell answers, balloon.current has fallen to currentMemory, and the
        guest's stats flow (balloon.unused present and last-update advancing). Before that
        every number is the boot transient, not the guest."""
        deadline = time.monotonic() + self.boot_timeout_s
        for g in self.guests:
            g.console.wait_ready(max(5.0, deadline - time.monotonic()))
        first_update: dict[str, int] = {}
        pending = {g.name for g in self.guests}
        while pending:
            stats = self.balloon_stats()
            for name in list(pending):
                s = stats.get(name, {})
                current_kib, update = s.get("balloon.current"), s.get("balloon.last-update")
                if "balloon.unused" not in s or current_kib is None or update is None:
                    continue
                first_update.setdefault(name, update)
                settled = current_kib <= self.current_mib * 1024 + 1024
                if settled and update > first_update[name]:
                    pending.discard(name)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise LabError(f"guests {sorted(pending)} not measurable after {self.boot_timeout_s:.0f} s")
            time.sleep(0.5)

    def _remove_domain(self, name: str) -> None:
        """Destroy and undefine one of *our* names; absent is fine."""
        assert self.conn is not None
        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()

    def down(self) -> None:
        """Destroy+undefine our domains, close consoles, remove our files. Idempotent."""
        with self._down_lock:
            for g in self.guests:
                g.console.close()
            if self.conn is not None:
                for name in self.names:
                    self._remove_domain(name)
                with contextlib.suppress(libvirt.libvirtError):
                    self.conn.close()
                self.conn = None
            self.guests = []
            if self._own_run_dir:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            atexit.unregister(self.down)

    # -- guest control ---------------------------------------------------------------------------

    def run(self, which: int | str, cmd: str, timeout_s: float = 30.0) -> tuple[int, str]:
        """Run a shell command in a guest over its serial console: (exit status, output)."""
        return self.guest(which).console.run(cmd, timeout_s)

    def start_hog(
        self,
        which: int | str,
        mode: HogMode,
        size_mib: int | None = None,
        hold_s: int = 0,
        page_us: int = 200,
    ) -> None:
        """Start the hog in the background: mode "grow" (B, until killed) or "hold" (A, to size_mib).

        page_us is the time per 4 KiB page: 100 us = 40 MiB/s, 500 us = 8 MiB/s.
        """
        if mode == "grow":
            cmd = f"hog grow {page_us} &"
        else:
            if size_mib is None:
                raise ValueError("mode 'hold' needs size_mib")
            cmd = f"hog hold {size_mib} {hold_s} {page_us} &"
        status, out = self.run(which, cmd)
        if status != 0:
            raise ConsoleError(f"starting hog failed ({status}): {out}")

    def stop_hog(self, which: int | str) -> None:
        """Kill the hog (SIGKILL, like the OOM killer would)."""
        self.run(which, "killall -9 hog 2>/dev/null; true")

    def balloon_stats(self) -> dict[str, dict[str, int]]:
        """Balloon and state stats of our running guests in one libvirt call (KiB; see LAB-NOTES)."""
        if self.conn is None:
            return {}
        doms = [g.domain for g in self.guests]
        flags = libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_STATE
        out: dict[str, dict[str, int]] = {}
        for dom, stats in self.conn.domainListGetStats(doms, flags, 0):
            out[dom.name()] = stats
        return out
