"""Start libvirtd when nothing runs it (PID 1 here is not systemd), and never stop one.

Other engineers and CI jobs share the daemon, so the lab only starts it when its socket is
absent and leaves it running afterwards: stopping it would kill their guests.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")


class LibvirtdError(RuntimeError):
    """libvirtd could not be reached or started."""


def ensure_libvirtd(timeout_s: float = 30.0) -> bool:
    """Make sure qemu:///system answers; return True if this call started the daemon."""
    if LIBVIRT_SOCK.exists():
        return False
    for daemon in ("virtlogd", "libvirtd"):
        exe = shutil.which(daemon) or f"/usr/sbin/{daemon}"
        if not Path(exe).exists():
            raise LibvirtdError(f"{daemon} not found: install libvirt-daemon-system")
        # -d daemonizes; a second copy racing us exits on its pidfile lock, which is harmless.
        subprocess.run([exe, "-d"], check=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if LIBVIRT_SOCK.exists():
            return True
        time.sleep(0.2)
    raise LibvirtdError(f"libvirtd started but {LIBVIRT_SOCK} did not appear within {timeout_s:.0f} s")
