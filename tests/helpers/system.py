"""What the system tests share: the memcoord unit inside the container (Unit), the config they run it with, the
host's lab guests and waiting for the shared libvirtd. The fixtures that build these are tests/system/conftest.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import libvirt

from lab.lab import Lab
from tests.helpers.container import Container

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
UNIT = "memcoord.service"
GUEST_MAX_MIB = 1024
GUEST_START_MIB = 512
STARVING_MIB = 150
GROW_STEP_MIB = 128
RESULTS = REPO / "artifacts" / "system-results.json"

# The config the tests run with: only our guests; no reclaim and no tax unless a test asks, so a guest that is not
# touched keeps its memory and every action in the journal has a cause the test made.
BASE_CONFIG = f"""\
[libvirt]
uri = "qemu:///system"
domains = ["mcsys-*"]

[loop]
interval_s = 1.0

[guest]
starving_mib = {STARVING_MIB}
wasteful_mib = 4000
grow_step_mib = {GROW_STEP_MIB}
reclaim_step_mib = 64
min_mib = 256
idle_tax_mib = 0

[host]
min_available_mib = 1024
"""


# The unit runs as the user memcoord, whom Debian's libvirtd lets in through polkit (test_unprivileged.py proves it
# on a stock libvirt). These tests drive the host's shared libvirtd through its socket instead, and that daemon runs
# without systemd and polkit, so it gives read-write access to root only: here the unit runs as root.
AS_ROOT_DROP_IN = "/etc/systemd/system/memcoord.service.d/10-as-root-for-the-host-libvirtd.conf"
AS_ROOT = """\
# The host's libvirtd (no polkit) lets only root write.
[Service]
User=root
Group=root
AmbientCapabilities=
"""


def record(key: str, value: object) -> None:
    """Keep a measured number (exposure, watchdog delay, ...) in artifacts/system-results.json for the report."""
    RESULTS.parent.mkdir(exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def wait_until(predicate: Callable[[], object], timeout_s: float, every_s: float = 0.5) -> object:
    """Poll until predicate() is truthy; return its value, or the last (falsy) one after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


class Unit:
    """The memcoord unit inside the container, seen the way an admin sees it: systemctl and journalctl."""

    def __init__(self, container: Container) -> None:
        self.ct = container

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """Run systemctl inside the container; return stdout."""
        return self.ct.run(["systemctl", *args], check=check, timeout=timeout).stdout

    def show(self, *props: str) -> dict[str, str]:
        """Unit properties (systemctl show)."""
        return self.ct.show(UNIT, *props)

    def cursor(self) -> str:
        """A mark at the newest journal entry (any unit): journal(after=mark) returns only entries after it.

        It is the entry's realtime, not its __CURSOR: `journalctl --after-cursor=C` with matches skips the first
        matching entry when the entry at C does not match (journalctl 252 steps over "the cursor entry")."""
        out = self.ct.run(["journalctl", "-o", "json", "-n", "1", "--no-pager"]).stdout
        return json.loads(out.splitlines()[-1])["__REALTIME_TIMESTAMP"]

    def journal(self, after: str | None = None, *matches: str) -> list[dict[str, str]]:
        """Journal entries of the unit (from systemd and from memcoord itself) after a mark, as JSON objects."""
        args = ["journalctl", "-u", UNIT, "-o", "json", "--no-pager", *matches]
        if after:
            args.append(f"--since=@{int(after) // 1_000_000}")
        out = self.ct.run(args).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [e for e in entries if not after or int(e["__REALTIME_TIMESTAMP"]) > int(after)]

    def messages(self, after: str | None = None) -> list[str]:
        """The MESSAGE texts of journal(after)."""
        return [str(e.get("MESSAGE", "")) for e in self.journal(after)]

    def wait_message(self, after: str | None, needle: str, timeout_s: float = 30) -> list[str]:
        """Wait until a journal message of the unit after `after` contains `needle`; return all messages."""
        found = wait_until(lambda: [m for m in self.messages(after) if needle in m], timeout_s, 0.5)
        msgs = self.messages(after)
        assert found, f"no journal message with {needle!r} within {timeout_s}s; got:\n" + "\n".join(msgs[-40:])
        return msgs

    def write_config(self, text: str) -> None:
        """Replace /etc/memcoord.toml."""
        self.ct.write("/etc/memcoord.toml", text)

    def main_pid(self) -> int:
        """The unit's MainPID (0 when not running)."""
        return int(self.show("MainPID")["MainPID"])

    def pid1_debug(self, on: bool) -> None:
        """Switch PID 1's log level: at debug it logs every sd_notify message it gets ("Got notification")."""
        self.ct.run(["systemd-analyze", "log-level", "debug" if on else "info"])


def system_prereqs() -> str | None:
    """Why the system tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, debootstrap, libvirt qemu:///system)"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "libvirtd"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            return f"needs {tool}: make deps"
    return None


def wait_for_libvirtd(timeout_s: float = 60) -> None:
    """Wait until qemu:///system answers (the shared daemon may be in the middle of a restart)."""

    def answers() -> bool:
        try:
            libvirt.open("qemu:///system").close()
        except libvirt.libvirtError:
            return False
        return True

    assert wait_until(answers, timeout_s, 1.0), "qemu:///system does not answer"


def reconnect(lab: Lab) -> None:
    """New libvirt connection and domain handles for the lab (after libvirtd restarted)."""
    lab.conn = libvirt.open(lab.uri)
    for g in lab.guests:
        g.domain = lab.conn.lookupByName(g.name)


def on_lab(lab: Lab, call: Callable[[], T]) -> T:
    """Run a libvirt call of the test; if the shared libvirtd restarted under us (other users restart it too),
    reconnect once and retry."""
    try:
        return call()
    except libvirt.libvirtError:
        wait_for_libvirtd()
        reconnect(lab)
        return call()


def stats(lab: Lab) -> dict[str, dict[str, int]]:
    """Balloon stats of the lab guests (KiB), as libvirt reports them."""
    return on_lab(lab, lab.balloon_stats)


def set_memory_mib(lab: Lab, name: str, mib: int) -> None:
    """setMemory from the host side (the admin's `virsh setmem`)."""
    on_lab(lab, lambda: lab.guest(name).domain.setMemoryFlags(mib * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE))


def reset_guests(lab: Lab) -> None:
    """Stop hogs and put every guest back at its start size; wait until the balloons are there."""
    for g in lab.guests:
        lab.stop_hog(g.name)
        set_memory_mib(lab, g.name, GUEST_START_MIB)

    def settled() -> bool:
        return all(abs(s["balloon.current"] - GUEST_START_MIB * 1024) <= 1024 for s in stats(lab).values())

    assert wait_until(settled, 60), stats(lab)
