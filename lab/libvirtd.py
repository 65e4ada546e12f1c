"""Start libvirtd when nothing runs it (PID 1 here is not systemd), and never stop one.

Other engineers and CI jobs share the daemon, so the lab starts it only when its socket is absent,
or when the socket is a leftover of a killed daemon (it refuses connections and no libvirtd process
is alive) and nobody restarted it within a grace period; it leaves the daemon running afterwards:
stopping it would kill their guests' management.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

LIBVIRT_SOCK = Path("/run/libvirt/libvirt-sock")
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")


class LibvirtdError(RuntimeError):
    """libvirtd could not be reached or started."""


def _answers() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(LIBVIRT_SOCK))
        except OSError:
            return False
    return True


def libvirtd_pid() -> int | None:
    """The pid in libvirtd's pidfile if that process is a live libvirtd (not a zombie)."""
    try:
        pid = int(LIBVIRTD_PIDFILE.read_text().strip())
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, ValueError):
        return None
    name = status.split("\n", 1)[0].split()[-1]
    zombie = "\nState:\tZ" in status
    return pid if name == "libvirtd" and not zombie else None


def _start() -> None:
    for daemon in ("virtlogd", "libvirtd"):
        exe = shutil.which(daemon) or f"/usr/sbin/{daemon}"
        if not Path(exe).exists():
            raise LibvirtdError(f"{daemon} not found: install libvirt-daemon-system")
        # -d daemonizes; a copy that is already running makes the new one exit on its pidfile lock.
        subprocess.run([exe, "-d"], check=False, capture_output=True)


def ensure_libvirtd(timeout_s: float = 60.0, grace_s: float = 15.0) -> bool:
    """Make sure libvirtd accepts connections; return True if this call started it."""
    if _answers():
        return False
    started = False
    deadline = time.monotonic() + timeout_s
    dead_since = time.monotonic()
    while time.monotonic() < deadline:
        if _answers():
            return started
        if libvirtd_pid() is not None:
            dead_since = time.monotonic()  # alive but busy (starting, or stopped by someone): wait
        elif not started and (not LIBVIRT_SOCK.exists() or time.monotonic() - dead_since > grace_s):
            _start()
            started = True
        time.sleep(0.3)
    raise LibvirtdError(f"libvirtd does not answer on {LIBVIRT_SOCK} after {timeout_s:.0f} s (pid {libvirtd_pid()})")


def restart_libvirtd(timeout_s: float = 20.0) -> None:
    """Stop libvirtd (SIGTERM, what `systemctl restart` sends; SIGKILL after timeout_s) and start it again. Its
    guests keep running. Only under the lab lock: other users' tests share the daemon."""
    pid = libvirtd_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
    ensure_libvirtd(grace_s=0.0)
