"""A lab of N tiny real QEMU guests with a virtio balloon, owned by one prefix.

Everything the lab touches is named `<prefix><i>`: other users of the same libvirtd (a CI job,
another engineer's system tests) keep their domains, and a crashed earlier run with the same
prefix is cleaned up on the next `up()`.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape

import libvirt

from lab.console import Console, ConsoleError
from lab.image import GuestImage, build_image, check_qemu_can_read, shared_disk
from lab.libvirtd import ensure_libvirtd
from memcoord.core.model import mib_to_kib
from memcoord.daemon.state import pid_alive

DEFAULT_URI = "qemu:///system"
HogMode = Literal["grow", "hold"]


class LabError(RuntimeError):
    """The lab could not bring its guests to a measurable state."""


def _silence_libvirt_stderr() -> None:
    """libvirt prints every error it raises to stderr by default; we handle them as exceptions."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


SWAP_SERIAL = "mcswap"


def _disk_xml(disk: Path | None, target: str = "vda", readonly: bool = True, serial: str = "") -> str:
    """A virtio disk, or nothing: the readonly one page-cache guests read (the guest's /dev/vda), or a writable one
    the guest swaps to (found in the guest by its serial).

    cache='none' (O_DIRECT) keeps the guests' reads and swap out of the host's page cache, so the host's
    available memory moves with what the guests' QEMUs hold, not with the host caching the file.
    """
    if disk is None:
        return ""
    extra = ("\n      <readonly/>" if readonly else "") + (f"\n      <serial>{serial}</serial>" if serial else "")
    return f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source file='{escape(str(disk))}'/>
      <target dev='{target}' bus='virtio'/>{extra}
    </disk>"""


_MEMFD_XML = """
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"""


def _balloon_xml(balloon: bool, autodeflate: bool, stats_period_s: int) -> str:
    if not balloon:
        return "<memballoon model='none'/>"
    attr = " autodeflate='on'" if autodeflate else ""
    stats = f"<stats period='{stats_period_s}'/>" if stats_period_s else ""
    return f"<memballoon model='virtio'{attr}>{stats}</memballoon>"


def domain_xml(
    name: str,
    image: GuestImage,
    console_sock: Path,
    max_mib: int,
    current_mib: int,
    stats_period_s: int = 1,
    disk: Path | None = None,
    autodeflate: bool = False,
    swap: Path | None = None,
    balloon: bool = True,
    memfd: bool = False,
) -> str:
    """One guest: software-emulated (KVM hangs on these hosts), 1 vCPU, balloon stats every second,
    and with `disk` a readonly virtio disk to fill its page cache from. `autodeflate`: the balloon
    deflates on the guest's own OOM (`<memballoon autodeflate='on'>`), before its OOM killer runs.
    `swap`: a writable disk file the guest swaps to (`Lab.up` turns it on).
    stats_period_s = 0: no stats period, libvirt's default (the balloon driver reports once, at boot).
    balloon = False: `<memballoon model='none'/>`, a guest memcoord must leave alone.
    memfd: its RAM is a shared memfd (as vhost-user devices and virtiofs need), which the host counts as shmem in
    its page cache (`Cached`), not as anonymous memory.

    on_reboot/on_crash destroy plus panic=-1 turn a dead guest kernel into a stopped domain the
    recorder sees, instead of a silently rebooting one.
    """
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{max_mib}</memory>
  <currentMemory unit='MiB'>{current_mib}</currentMemory>
  <vcpu>1</vcpu>{_MEMFD_XML if memfd else ""}
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
    <controller type='usb' model='none'/>{_disk_xml(disk)}{_disk_xml(swap, "vdb", False, SWAP_SERIAL)}
    {_balloon_xml(balloon, autodeflate, stats_period_s)}
  </devices>
</domain>
"""


def remove_orphans(prefix_root: str, uri: str = DEFAULT_URI) -> list[str]:
    """Tear down guests of dead lab processes: names `<prefix_root><pid>-<n>` whose pid is gone.

    A lab killed with SIGKILL (or one whose libvirtd died under it) cannot clean up; its pid in the
    name tells a later run that nobody owns those guests any more. Returns the names removed.
    """
    _silence_libvirt_stderr()
    ensure_libvirtd()
    pattern = re.compile(rf"^{re.escape(prefix_root)}(\d+)-\d+$")
    removed = []
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            m = pattern.match(dom.name())
            if m and not pid_alive(int(m.group(1))):
                with contextlib.suppress(libvirt.libvirtError):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefine()
                removed.append(dom.name())
    finally:
        conn.close()
    for d in glob.glob(f"/tmp/{prefix_root}*"):
        m = re.match(rf"^{re.escape(prefix_root)}(\d+)-", Path(d).name)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
    return removed


@dataclass
class Guest:
    """A running lab guest: its libvirt domain and its console."""

    name: str
    domain: libvirt.virDomain
    console: Console
    max_mib: int
    current_mib: int
    has_disk: bool = False
    has_swap: bool = False


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
        disk_guests: Collection[int] = (),
        autodeflate_guests: Collection[int] = (),
        swap_guests: Collection[int] = (),
        swap_mib: int = 1024,
        no_balloon_guests: Collection[int] = (),
        stats_period_s: int = 1,
        memfd_guests: Collection[int] = (),
    ) -> None:
        """disk_guests: 1-based indexes of the guests that get the shared readonly disk (/dev/vda);
        autodeflate_guests: those whose balloon deflates on their own OOM (`domain_xml`'s autodeflate);
        swap_guests: those that swap to a writable disk of their own of swap_mib (sparse, in the run dir);
        no_balloon_guests: those with no balloon device (`<memballoon model='none'/>`); stats_period_s: every
        balloon's stats period (0: none, libvirt's default); memfd_guests: those whose RAM is a shared memfd
        (`domain_xml`'s memfd)."""
        self.prefix = prefix
        self.n = n
        self.max_mib = max_mib
        self.current_mib = current_mib
        self.uri = uri
        self.image = image
        self.boot_timeout_s = boot_timeout_s
        self.disk_guests = frozenset(disk_guests)
        if not self.disk_guests <= set(range(1, n + 1)):
            raise ValueError(f"disk_guests {sorted(self.disk_guests)} not within 1..{n}")
        self.autodeflate_guests = frozenset(autodeflate_guests)
        if not self.autodeflate_guests <= set(range(1, n + 1)):
            raise ValueError(f"autodeflate_guests {sorted(self.autodeflate_guests)} not within 1..{n}")
        self.swap_guests = frozenset(swap_guests)
        if not self.swap_guests <= set(range(1, n + 1)):
            raise ValueError(f"swap_guests {sorted(self.swap_guests)} not within 1..{n}")
        self.swap_mib = swap_mib
        self.no_balloon_guests = frozenset(no_balloon_guests)
        self.memfd_guests = frozenset(memfd_guests)
        if not self.memfd_guests <= set(range(1, n + 1)):
            raise ValueError(f"memfd_guests {sorted(self.memfd_guests)} not within 1..{n}")
        self.stats_period_s = stats_period_s
        self.disk: Path | None = None
        self._own_run_dir = run_dir is None
        self._run_dir = run_dir
        self.conn: libvirt.virConnect | None = None
        self.guests: list[Guest] = []
        self._down_lock = threading.Lock()

    @property
    def run_dir(self) -> Path:
        """Console sockets and logs; a fresh /tmp/<prefix>XXXX unless given (short: sockets max 108 bytes)."""
        if self._run_dir is None:
            self._run_dir = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/tmp"))
        return self._run_dir

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
        if self.disk_guests and self.disk is None:
            self.disk = shared_disk()
        check_qemu_can_read(self.image.kernel, self.image.initrd, *([self.disk] if self.disk else []))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o777)  # QEMU (libvirt-qemu) creates the console sockets here
        atexit.register(self.down)
        for attempt in (1, 2):
            try:
                self.conn = libvirt.open(self.uri)
                for name in self.names:
                    self._remove_domain(name)
                for name in self.names:
                    self._start_guest(name)
                self._wait_measurable()
                return self
            except libvirt.libvirtError:
                lost = self.conn is None or not self.conn.isAlive()
                self._teardown_guests()
                if attempt == 2 or not lost:
                    self.down()
                    raise
                # libvirtd is shared and was restarted under us: wait for it and boot again.
                ensure_libvirtd()
            except BaseException:
                self.down()
                raise
        return self

    def _start_guest(self, name: str) -> None:
        assert self.conn is not None and self.image is not None
        sock = self.run_dir / f"{name}.sock"
        index = self.names.index(name) + 1
        disk = self.disk if index in self.disk_guests else None
        autodeflate = index in self.autodeflate_guests
        swap = None
        if index in self.swap_guests:
            swap = self.run_dir / f"{name}-swap.raw"
            with swap.open("wb") as f:
                f.truncate(self.swap_mib << 20)
        balloon = index not in self.no_balloon_guests
        # Without a balloon there is nothing to start below the maximum at.
        current_mib = self.current_mib if balloon else self.max_mib
        xml = domain_xml(
            name,
            self.image,
            sock,
            self.max_mib,
            current_mib,
            stats_period_s=self.stats_period_s,
            disk=disk,
            autodeflate=autodeflate,
            balloon=balloon,
            memfd=index in self.memfd_guests,
            swap=swap,
        )
        dom = self.conn.defineXML(xml)
        console = Console(sock, self.run_dir / f"{name}.console.log")
        # Append before create() so down() cleans up even if the start fails half-way.
        guest = Guest(name, dom, console, self.max_mib, self.current_mib, disk is not None, swap is not None)
        self.guests.append(guest)
        dom.create()
        console.connect()

    def _wait_measurable(self) -> None:
        """Ready means: the shell answers, balloon.current has fallen to currentMemory, and the
        guest's stats flow (balloon.unused present and last-update advancing). Before that
        every number is the boot transient, not the guest. Without a stats period, stats do not
        flow: the balloon's size is all there is to wait for; without a balloon, the shell."""
        deadline = time.monotonic() + self.boot_timeout_s
        for g in self.guests:
            g.console.wait_ready(max(5.0, deadline - time.monotonic()))
            if g.has_swap:
                self._swap_on(g)
        first_update: dict[str, int] = {}
        pending = {n for i, n in enumerate(self.names, 1) if i not in self.no_balloon_guests}
        while pending:
            stats = self.balloon_stats()
            for name in list(pending):
                s = stats.get(name, {})
                current_kib, update = s.get("balloon.current"), s.get("balloon.last-update")
                settled = current_kib is not None and current_kib <= mib_to_kib(self.current_mib + 1)
                if settled and not self.stats_period_s:
                    pending.discard(name)
                if "balloon.unused" not in s or current_kib is None or update is None:
                    continue
                first_update.setdefault(name, update)
                if settled and update > first_update[name]:
                    pending.discard(name)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise LabError(f"guests {sorted(pending)} not measurable after {self.boot_timeout_s:.0f} s")
            time.sleep(0.5)

    def _swap_on(self, g: Guest) -> None:
        """mkswap and swapon the guest's swap disk, the virtio disk whose serial is SWAP_SERIAL."""
        find = f'for d in /sys/block/vd*; do [ "$(cat $d/serial)" = {SWAP_SERIAL} ] && echo /dev/${{d##*/}}; done'
        cmd = f"dev=$({find}); mkswap $dev >/dev/null && swapon $dev && grep -c ^/dev /proc/swaps"
        status, out = g.console.run(cmd)
        if status != 0 or out.strip() != "1":
            raise LabError(f"swap on {g.name} failed ({status}): {out}")

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

    def _remove_all_ours(self) -> None:
        """Remove our domains; if libvirtd died under us (it is shared), wait for it and try again,
        so a guest is not left running for nobody."""
        for attempt in (1, 2):
            try:
                assert self.conn is not None
                if not self.conn.isAlive():
                    raise libvirt.libvirtError("connection lost")
                for name in self.names:
                    self._remove_domain(name)
                return
            except libvirt.libvirtError:
                if attempt == 2:
                    raise
                with contextlib.suppress(libvirt.libvirtError):
                    self.conn.close()
                ensure_libvirtd()
                self.conn = libvirt.open(self.uri)

    def _teardown_guests(self) -> None:
        """Close consoles, destroy+undefine our domains, drop the connection."""
        for g in self.guests:
            g.console.close()
        if self.conn is not None:
            try:
                self._remove_all_ours()
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    self.conn.close()
                self.conn = None
        self.guests = []

    def down(self) -> None:
        """Destroy+undefine our domains, close consoles, remove our files. Idempotent."""
        with self._down_lock:
            self._teardown_guests()
            if self._own_run_dir and self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)
                self._run_dir = None
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
        """Start the hog in the background: mode "grow" (B, until killed) or "hold" (A, to size_mib);
        returns once the hog has reported its start.

        page_us is the time per 4 KiB page: 100 us = 40 MiB/s, 500 us = 8 MiB/s.
        """
        if mode == "grow":
            cmd = f"hog grow {page_us} &"
        else:
            if size_mib is None:
                raise ValueError("mode 'hold' needs size_mib")
            cmd = f"hog hold {size_mib} {hold_s} {page_us} &"
        console = self.guest(which).console
        runs_before = console.state.hog_runs
        status, out = self.run(which, cmd)
        if status != 0:
            raise ConsoleError(f"starting hog failed ({status}): {out}")
        # Return once the hog runs, so callers can wait on its state without seeing the previous one.
        deadline = time.monotonic() + 15
        while console.state.hog_runs == runs_before:
            if time.monotonic() > deadline:
                raise ConsoleError(f"hog did not start in {self.guest(which).name}: {out}")
            time.sleep(0.05)

    def stop_hog(self, which: int | str) -> None:
        """Kill the hog (SIGKILL, like the OOM killer would)."""
        self.run(which, "killall -9 hog 2>/dev/null; true")

    def read_disk(self, which: int | str, mib: int | None = None, loop: bool = False) -> int:
        """Read the guest's readonly disk in the background, filling its page cache; returns the
        reader's pid in the guest (for `stop_reading`).

        The reader keeps the disk open all along: the guest kernel drops a block device's whole cache
        when its last opener closes it, which a file's cache never does. Without `loop`: read `mib` MiB
        from the start (all of it if None) once, print "mclab: read done <pid>" (see
        `wait_read_done`), then hold the cache. With `loop`: read all of it over and over, the cache
        recycled page by page, like a busy file reader.
        The reader leaves the control shell's OOM immunity behind (an OOM kill of it is one the
        timeline must see). `stop_reading` ends it and so lets the guest drop the cache.
        """
        guest = self.guest(which)
        if not guest.has_disk:
            raise LabError(f"{guest.name} has no disk: boot it with disk_guests")
        count = "" if mib is None else f" count={mib}"
        read = f"dd if=/dev/vda of=/dev/null bs=1M{count} 2>/dev/null"
        if loop:
            body = f"exec 3</dev/vda; while true; do {read}; done"
        else:
            body = f"exec 3</dev/vda; {read}; echo mclab: read done $$; exec sleep 2147483647"
        # A separate `sh -c`, so $$ inside is the pid `$!` names and kill stops the reader.
        status, out = self.run(which, f"sh -c 'echo 0 > /proc/self/oom_score_adj; {body}' </dev/null & echo pid=$!")
        m = re.search(r"pid=(\d+)", out)
        if status != 0 or m is None:
            raise ConsoleError(f"starting the disk reader in {guest.name} failed ({status}): {out}")
        return int(m.group(1))

    def wait_read_done(self, which: int | str, pid: int, timeout_s: float = 60.0) -> float:
        """Wait until the single read started as `pid` has finished; returns the seconds waited."""
        console = self.guest(which).console
        t0 = time.monotonic()
        while f"mclab: read done {pid}" not in console.lines():
            if time.monotonic() - t0 > timeout_s:
                raise LabError(f"disk read {pid} in {self.guest(which).name} not done after {timeout_s:.0f} s")
            time.sleep(0.2)
        return time.monotonic() - t0

    def stop_reading(self, which: int | str, pid: int) -> None:
        """Stop a disk reader: the process `read_disk` returned, then any dd it runs."""
        self.run(which, f"kill {pid} 2>/dev/null; killall dd 2>/dev/null; true")

    def balloon_stats(self) -> dict[str, dict[str, int]]:
        """Balloon and state stats of our guests in one libvirt call (KiB; see LAB-NOTES).

        libvirtd is shared and may be restarted under us (its guests survive that): on a broken
        connection we reconnect once and look our domains up again.
        """
        if self.conn is None:
            return {}
        try:
            return self._balloon_stats()
        except libvirt.libvirtError:
            if self.conn is not None and self.conn.isAlive():
                raise
            self._reconnect()
            return self._balloon_stats()

    def _balloon_stats(self) -> dict[str, dict[str, int]]:
        assert self.conn is not None
        doms = [g.domain for g in self.guests]
        flags = libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_STATE
        out: dict[str, dict[str, int]] = {}
        for dom, stats in self.conn.domainListGetStats(doms, flags, 0):
            out[dom.name()] = stats
        return out

    def _reconnect(self) -> None:
        with self._down_lock:
            if self.conn is None:
                return
            with contextlib.suppress(libvirt.libvirtError):
                self.conn.close()
            ensure_libvirtd()
            self.conn = libvirt.open(self.uri)
            for g in self.guests:
                g.domain = self.conn.lookupByName(g.name)
