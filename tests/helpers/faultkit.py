"""Fault injection on the real libvirtd, and `memcoord run` as a subprocess whose log and timeline a test reads.

libvirtd is shared (other engineers, CI): every fault here is undone in a `finally` — a stopped daemon gets
SIGCONT, a killed one is started again and answered before the test goes on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest

from memcoord.daemon import timeline

URI = "qemu:///system"
PIDFILE = Path("/run/libvirtd.pid")
SOCK = Path("/run/libvirt/libvirt-sock")
MEMCOORD = Path(sys.executable).parent / "memcoord"

LOST = "lost the hypervisor"
RECOVERED = "hypervisor reachable again"
TIMELINE_NAME = "timeline.jsonl"


def require_libvirtd() -> None:
    if os.geteuid() != 0 or (shutil.which("libvirtd") is None and not Path("/usr/sbin/libvirtd").exists()):
        pytest.skip("needs root and libvirtd (make deps)")
    if not SOCK.exists():
        start_libvirtd()


def libvirtd_pid() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(PIDFILE.read_text().strip())
        if Path(f"/proc/{pid}/comm").read_text().strip() == "libvirtd":
            return pid
    return None


def answers(timeout_s: float = 3.0) -> bool:
    """True when libvirtd completes a real RPC within timeout_s (open alone may be queued by the kernel)."""
    ok: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(libvirt.libvirtError):
            conn = libvirt.open(URI)
            conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, 0)
            conn.close()
            ok.append(True)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    return bool(ok)


def start_libvirtd(timeout_s: float = 30.0) -> None:
    if libvirtd_pid() is None:
        subprocess.run(["virtlogd", "-d"], check=False, capture_output=True)
        subprocess.run(["libvirtd", "-d"], check=False, capture_output=True)
    deadline = time.monotonic() + timeout_s
    while not answers():
        if time.monotonic() > deadline:
            raise RuntimeError("libvirtd did not come back")
        time.sleep(0.2)


def kill_libvirtd(sig: int = signal.SIGKILL) -> None:
    pid = libvirtd_pid()
    assert pid is not None, "libvirtd is not running"
    os.kill(pid, sig)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


@contextlib.contextmanager
def libvirtd_restored() -> Iterator[None]:
    """Whatever a test does to libvirtd, it runs and answers afterwards."""
    try:
        yield
    finally:
        pid = libvirtd_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        start_libvirtd()


@dataclass
class MemcoordRun:
    """`memcoord run` as a subprocess; stderr (its log) collected line by line with arrival times.

    Its actions come from the timeline it writes (write_config puts it next to the config), not from the log.
    """

    config: Path
    proc: subprocess.Popen[str] | None = None
    lines: list[tuple[float, str]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start(self, *args: str) -> MemcoordRun:
        self.proc = subprocess.Popen(
            [str(MEMCOORD), "run", "--config", str(self.config), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()

    def text(self) -> list[str]:
        with self._cond:
            return [line for _t, line in self.lines]

    @property
    def timeline_path(self) -> Path:
        return self.config.with_name(TIMELINE_NAME)

    def timeline(self) -> list[dict[str, object]]:
        """Every tick the daemon recorded so far (a line still being written is left for the next call)."""
        return timeline.read_lines(self.timeline_path) if self.timeline_path.exists() else []

    def actions(self, domain: str | None = None) -> list[timeline.TimelineAction]:
        """The setMemory calls that worked (not failed, not a dry run), in order, from the timeline."""
        return [
            a
            for line in self.timeline()
            for a in timeline.actions(line)
            if a.applied and (domain is None or a.domain == domain)
        ]

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.text())

    def wait_for(self, pred, timeout_s: float, what: str) -> float:  # type: ignore[no-untyped-def]
        """Wait until pred(lines) is true; returns the monotonic time it became so."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred([line for _t, line in self.lines]):
                left = deadline - time.monotonic()
                assert left > 0, f"timeout waiting for {what}; log:\n" + "\n".join(self.text()[-40:])
                assert self.proc is not None and self.proc.poll() is None, "memcoord exited:\n" + "\n".join(
                    line for _t, line in self.lines
                )
                self._cond.wait(min(left, 0.5))
            return time.monotonic()

    def wait_count(self, needle: str, n: int, timeout_s: float) -> float:
        return self.wait_for(lambda ls: sum(needle in x for x in ls) >= n, timeout_s, f"{n}x {needle!r}")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.2)  # let the reader take the last lines
        return self.proc.returncode


def write_config(path: Path, **sections: dict[str, object]) -> Path:
    """A config for mcfault-* guests, with the timeline beside it (MemcoordRun.actions reads it)."""
    import tomli_w

    path.with_name(TIMELINE_NAME).unlink(missing_ok=True)
    base: dict[str, dict[str, object]] = {
        "libvirt": {"uri": URI, "domains": ["mcfault-*"]},
        "loop": {"interval_s": 1.0, "stats_period_s": 1},
        "timeline": {"path": str(path.with_name(TIMELINE_NAME))},
    }
    for name, body in sections.items():
        base.setdefault(name, {}).update(body)
    path.write_text(tomli_w.dumps(base))
    return path
