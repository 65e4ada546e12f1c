"""A host process that takes memory: the lab's static hog, run on the host.

Host-pressure scenarios need something other than the guests to eat the host's available memory;
the same hog the guests run (built by lab/image.py) does it, and holds its memory until stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from lab.console import HOG_HOLD_RE
from lab.image import GuestImage, build_image

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills the hog if the test process dies (even by SIGKILL)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class HostHogError(RuntimeError):
    """The host hog did not reach its size."""


class HostHog:
    """`hog hold SIZE_MIB 0 PAGE_US` on the host; a context manager that always kills it.

    start() returns once the hog holds all of its memory (so the pressure is fully there), stop()
    kills it (SIGKILL, the memory goes back at once). An atexit hook covers a test process that
    ends without leaving the `with` block, and the hog dies with its parent (PR_SET_PDEATHSIG) if
    that process is killed outright. Start it from a thread that outlives it (the death signal
    follows the starting thread).
    """

    def __init__(self, size_mib: int, page_us: int = 5, image: GuestImage | None = None) -> None:
        self.size_mib = size_mib
        self.page_us = page_us  # 5 us per 4 KiB page: ~800 MiB/s, pressure that appears within a second or so
        self._binary: Path = (image or build_image()).hog
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._holding = threading.Event()
        self.started_mono_s: float | None = None
        self.holding_mono_s: float | None = None

    def __enter__(self) -> HostHog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 60.0) -> None:
        if self.proc is not None:
            raise HostHogError("host hog already started")
        atexit.register(self.stop)
        self.started_mono_s = time.monotonic()
        self.proc = subprocess.Popen(
            [str(self._binary), "hold", str(self.size_mib), "0", str(self.page_us)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=self._read, name="host-hog", daemon=True).start()
        if not self._holding.wait(timeout_s):
            self.stop()
            raise HostHogError(f"host hog did not hold {self.size_mib} MiB within {timeout_s:.0f} s: {self.lines[-3:]}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if HOG_HOLD_RE.search(line):
                self.holding_mono_s = time.monotonic()
                self._holding.set()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Kill the hog and reap it. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        atexit.unregister(self.stop)


MEMCG_V1_ROOT = Path("/sys/fs/cgroup/memory")
CGROUP_V2_ROOT = Path("/sys/fs/cgroup")


def _memory_cgroup(name: str, limit_mib: int) -> Path:
    """A memory cgroup limited to limit_mib: v2 where the memory controller is there, else v1 (this lab's
    hosts are hybrid: v1 controllers). Returns its directory (whose cgroup.procs takes a pid)."""
    v2_controllers = CGROUP_V2_ROOT / "cgroup.controllers"
    if v2_controllers.exists() and "memory" in v2_controllers.read_text().split():
        cg = CGROUP_V2_ROOT / name
        cg.mkdir(exist_ok=True)
        (cg / "memory.max").write_text(str(limit_mib << 20))
        return cg
    if not MEMCG_V1_ROOT.is_dir():
        raise HostHogError("no memory cgroup controller (neither cgroup v2 nor v1 /sys/fs/cgroup/memory)")
    cg = MEMCG_V1_ROOT / name
    cg.mkdir(exist_ok=True)
    (cg / "memory.limit_in_bytes").write_text(str(limit_mib << 20))
    return cg


class HostPressure:
    """Real host memory pressure without taking the host's memory: the hog re-reads an mmap of a file larger
    than the memory cgroup it is confined to (`hog mapread`), so its pages are reclaimed and read again all the
    time, and the kernel counts its stalls in the host's PSI (/proc/pressure/memory) too. Measured on this lab's
    host: a 64 MiB cgroup re-reading 400 MiB took `some avg10` from 0 to ~17 % in 12 s. A context manager that
    always kills the hog and removes its cgroup and file."""

    def __init__(self, file_mib: int = 400, limit_mib: int = 64, image: GuestImage | None = None) -> None:
        self.file_mib = file_mib
        self.limit_mib = limit_mib
        self._binary: Path = (image or build_image()).hog
        self.name = f"mclab-pressure-{os.getpid()}"
        self.file = Path("/var/tmp") / f"{self.name}.raw"
        self.cgroup: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HostPressure:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        atexit.register(self.stop)
        with self.file.open("wb") as f:
            f.truncate(self.file_mib << 20)
        self.cgroup = _memory_cgroup(self.name, self.limit_mib)
        procs = self.cgroup / "cgroup.procs"

        def enter_cgroup() -> None:
            _die_with_parent()
            procs.write_text(str(os.getpid()))

        self.proc = subprocess.Popen(
            [str(self._binary), "mapread", str(self.file), str(self.file_mib)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=enter_cgroup,
        )

    def stop(self) -> None:
        """Kill the hog, remove its cgroup and file. Idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.cgroup is not None:
            for _ in range(50):  # the cgroup empties a moment after its last task is reaped
                try:
                    self.cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            self.cgroup = None
        self.file.unlink(missing_ok=True)
        atexit.unregister(self.stop)
