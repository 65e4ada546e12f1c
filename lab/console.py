"""The control channel to a guest: its serial console on a unix socket.

One reader thread per guest keeps everything the guest prints (a log file plus parsed events),
because the console carries three interleaved streams: command output, the hog's progress
lines and the guest kernel's messages (OOM kills, panics). `run` frames a command with unique
markers so its output can be cut out of that stream.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOG_MIB_RE = re.compile(r"hog: (\d+) MiB")
HOG_HOLD_RE = re.compile(r"hog: holding (\d+) MiB")
HOG_START_RE = re.compile(r"hog: start (\d+)")
HOG_EXIT_RE = re.compile(r"hog: exit")
OOM_RE = re.compile(r"Out of memory: Killed process (\d+) \(([^)]*)\)")
PANIC_RE = re.compile(r"Kernel panic")
READY_LINE = "mclab: ready"


class ConsoleError(RuntimeError):
    """The guest did not answer on its console in time."""


@dataclass
class OomKill:
    """One kill by the guest kernel's OOM killer, as the kernel reported it."""

    t_mono_s: float
    pid: int
    comm: str


@dataclass
class HogEvent:
    """A change in the hog's life: start, holding, exit (after freeing), killed (by the OOM killer)."""

    t_mono_s: float
    kind: str
    hog_mib: int


@dataclass
class ConsoleState:
    """What the console has told us so far; read by the timeline recorder."""

    hog_mib: int = 0
    hog_state: str = "none"  # none | growing | holding | exited | killed
    hog_pid: int | None = None
    hog_runs: int = 0
    hog_peak_mib: int = 0
    hog_events: list[HogEvent] = field(default_factory=list)
    oom_kills: list[OomKill] = field(default_factory=list)
    panicked: bool = False
    ready: bool = False


class Console:
    """A persistent connection to one guest's serial console."""

    _ids = itertools.count(1)

    def __init__(self, sock_path: Path, log_path: Path) -> None:
        self.sock_path = sock_path
        self.log_path = log_path
        self.state = ConsoleState()
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._cmd_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._log = log_path.open("a", buffering=1, encoding="utf-8", errors="replace")

    def connect(self, timeout_s: float = 10.0) -> None:
        """QEMU creates the socket when it starts; retry briefly in case we are early."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.sock_path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise ConsoleError(f"cannot connect to {self.sock_path}") from None
                time.sleep(0.1)
        self._sock = sock
        self._thread = threading.Thread(target=self._reader, name=f"console-{self.sock_path.stem}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._log.close()

    def _reader(self) -> None:
        assert self._sock is not None
        pending = b""
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            pending += data
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                self._on_line(raw.decode("utf-8", errors="replace").rstrip("\r"))

    def _on_line(self, line: str) -> None:
        now = time.monotonic()
        self._log.write(f"{now:.3f} {line}\n")
        s = self.state
        if m := OOM_RE.search(line):
            s.oom_kills.append(OomKill(now, int(m.group(1)), m.group(2)))
            if s.hog_pid == int(m.group(1)):
                s.hog_state = "killed"
                s.hog_events.append(HogEvent(now, "killed", s.hog_mib))
        elif m := HOG_START_RE.search(line):
            s.hog_pid, s.hog_mib, s.hog_state = int(m.group(1)), 0, "growing"
            s.hog_runs += 1
            s.hog_events.append(HogEvent(now, "start", 0))
        elif m := HOG_HOLD_RE.search(line):
            s.hog_mib, s.hog_state = int(m.group(1)), "holding"
            s.hog_events.append(HogEvent(now, "holding", s.hog_mib))
        elif HOG_EXIT_RE.search(line):
            s.hog_state = "exited"
            s.hog_events.append(HogEvent(now, "exit", s.hog_mib))
        elif m := HOG_MIB_RE.search(line):
            s.hog_mib = int(m.group(1))
        elif PANIC_RE.search(line):
            s.panicked = True
        elif READY_LINE in line:
            s.ready = True
        s.hog_peak_mib = max(s.hog_peak_mib, s.hog_mib)
        with self._cond:
            self._lines.append(line)
            self._cond.notify_all()

    def send(self, text: str) -> None:
        """Type text into the guest's shell (no newline added)."""
        if self._sock is None:
            raise ConsoleError("console not connected")
        self._sock.sendall(text.encode())

    def run(self, cmd: str, timeout_s: float = 30.0) -> tuple[int, str]:
        """Run a shell command in the guest; return (exit status, its output lines joined).

        Lines from the hog and the kernel that interleave with the output are dropped.
        """
        n = next(self._ids)
        begin, end = f"__mcb{n}__", f"__mce{n}_"
        with self._cmd_lock:
            with self._cond:
                start_idx = len(self._lines)
            # The markers are built from pieces so the (unechoed) command text never matches them.
            self.send(f"echo __mcb{n}''__; {cmd}\necho __mce{n}''_$?__\n")
            deadline = time.monotonic() + timeout_s
            with self._cond:
                while True:
                    lines = self._lines[start_idx:]
                    ends = [i for i, line in enumerate(lines) if line.startswith(end)]
                    if ends:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ConsoleError(f"timeout after {timeout_s:.0f} s running {cmd!r} on {self.sock_path.stem}")
                    self._cond.wait(left)
        status = int(lines[ends[0]][len(end) :].rstrip("_") or 0)
        try:
            first = next(i for i, line in enumerate(lines) if line.startswith(begin)) + 1
        except StopIteration:
            first = 0
        out = [
            line
            for line in lines[first : ends[0]]
            if not line.startswith("hog: ") and not re.match(r"^\[\s*\d+\.\d+\]", line)
        ]
        return status, "\n".join(out)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for init's banner, then for the shell to answer a command.

        Commands typed before the shell exists would sit in the tty buffer and be echoed,
        so we only type once the banner is seen (or the wait ran out: then we try anyway).
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._cond.wait_for(lambda: self.state.ready, timeout=timeout_s)
        last: Exception | None = None
        while True:
            try:
                status, out = self.run("echo alive", timeout_s=max(1.0, min(5.0, deadline - time.monotonic())))
                if status == 0 and "alive" in out:
                    return
            except ConsoleError as e:
                last = e
            if time.monotonic() > deadline:
                raise ConsoleError(f"guest on {self.sock_path} did not answer within {timeout_s:.0f} s") from last

    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)
