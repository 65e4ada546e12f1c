"""Run the real `memcoord run` against a lab, as a subprocess, with the shipped config.

The lab config is the shipped etc/memcoord.toml with only what the lab must change: the
domains memcoord manages (the lab's prefix, so it never touches anyone else's guests) and,
per scenario, explicit overrides such as the host guard.

memcoord's actions are read from the timeline it writes ([timeline] path, JSON lines, parsed by
memcoord.daemon.timeline), not from its log lines: the log's wording may change, the timeline's fields may not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from memcoord.core.model import KIB_PER_MIB, Rule
from memcoord.daemon import timeline as mc_timeline

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO_ROOT / "etc" / "memcoord.toml"
TIMELINE_NAME = "memcoord-timeline.jsonl"
FOLLOW_INTERVAL_S = 0.2


@dataclass(frozen=True)
class CoordinatorAction:
    """One setMemory memcoord applied (its timeline's record); t_mono_s is the tick's time on this clock."""

    t_mono_s: float
    action: str
    domain: str
    from_mib: int
    to_mib: int
    reason: str
    rule: Rule | None  # the policy's step, None from a timeline older than the field


def _mono_s(t_wall_s: float) -> float:
    """A timeline time (wall clock) on the lab's monotonic clock; read a fraction of a second after the tick."""
    return time.monotonic() - max(0.0, time.time() - t_wall_s)


def _action(act: mc_timeline.TimelineAction) -> CoordinatorAction:
    return CoordinatorAction(
        _mono_s(act.t_s),
        str(act.action),
        act.domain,
        round(act.from_kib / KIB_PER_MIB),
        round(act.to_kib / KIB_PER_MIB),
        act.reason,
        act.rule,
    )


class TimelineFollower:
    """Reads a growing memcoord timeline: each call to poll() returns the lines completed since the last call.

    The daemon appends whole lines and flushes them, so a line without its newline is still being written and
    waits for the next poll. A file replaced by its rotation (PATH -> PATH.1) is reopened from the start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None
        self._inode: int | None = None
        self._partial = ""
        self.lines_read = 0
        self.errors: list[str] = []  # lines that are not timeline lines: skipped, kept here for the test to fail on

    def poll(self) -> list[dict[str, Any]]:
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return []
        out = []
        if self._file is not None and inode != self._inode:  # rotated: finish the old file first
            out = self._lines(self._file.read())
            self._file.close()
            self._file = None
        if self._file is None:
            self._file, self._inode, self.lines_read = self.path.open(encoding="utf-8"), inode, 0
        return out + self._lines(self._file.read())

    def _lines(self, text: str) -> list[dict[str, Any]]:
        out = []
        for raw in (self._partial + text).splitlines(keepends=True):
            if not raw.endswith("\n"):
                self._partial = raw
                break
            self._partial = ""
            self.lines_read += 1
            try:
                out.append(mc_timeline.parse_line(raw, f"{self.path}:{self.lines_read}"))
            except mc_timeline.TimelineError as exc:
                self.errors.append(str(exc))
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def lab_config(
    domain_glob: str, overrides: dict[str, Any] | None = None, base: Path = SHIPPED_CONFIG
) -> dict[str, Any]:
    """The shipped config, restricted to the lab's domains, plus explicit overrides."""
    with base.open("rb") as f:
        cfg = tomllib.load(f)
    cfg = _merge(cfg, {"libvirt": {"domains": [domain_glob]}})
    return _merge(cfg, overrides or {})


def with_timeline(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The config with memcoord's timeline written to path (where the lab reads its actions)."""
    return _merge(config, {"timeline": {"path": str(path)}})


def memcoord_command() -> list[str]:
    """The console script beside this interpreter (the venv's), else on PATH, else the module."""
    beside = Path(sys.executable).parent / "memcoord"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("memcoord")
    if found:
        return [found]
    return [sys.executable, "-m", "memcoord.cli"]


class Memcoord:
    """`memcoord run --config PATH` as a child process; its stderr is kept, its actions read from its timeline."""

    def __init__(
        self,
        config: dict[str, Any],
        work_dir: Path,
        extra_args: list[str] | None = None,
        on_action: Callable[[CoordinatorAction], None] | None = None,
        on_line: Callable[[str], None] | None = None,
        on_status: Callable[[float, str], None] | None = None,
        on_tick: Callable[[float, dict[str, Any]], None] | None = None,
    ) -> None:
        """on_action: each applied action; on_tick: each timeline line (t_mono_s, line), e.g. to see the
        hypervisor lost (its "error" field); on_line: each log line; on_status: each sd_notify STATUS=."""
        self.work_dir = work_dir
        self.timeline_path = work_dir / TIMELINE_NAME
        self.config = with_timeline(config, self.timeline_path)
        self.config_path = work_dir / "memcoord.toml"
        self.log_path = work_dir / "memcoord.log"
        self.extra_args = extra_args or []
        self.on_action = on_action
        self.on_line = on_line
        self.on_status = on_status
        self.on_tick = on_tick
        self.status = ""  # memcoord's latest sd_notify STATUS= line (one per tick)
        self.status_times_mono_s: list[float] = []
        self._notify_dir = Path(tempfile.mkdtemp(prefix="mclab-notify-"))
        self._notify_sock: socket.socket | None = None
        self.actions: list[CoordinatorAction] = []
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._stop_following = threading.Event()
        # Timeline lines that could not be read (skipped, never silently): LabRun fails its waits on them.
        self.timeline_errors: list[str] = []

    def __enter__(self) -> Memcoord:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.timeline_path.unlink(missing_ok=True)  # a previous run's lines are not this run's actions
        self.config_path.write_text(tomli_w.dumps(self.config))
        cmd = [*memcoord_command(), "run", "--config", str(self.config_path), *self.extra_args]
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)  # log to our pipe, never to the journal
        for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(var, None)
        # Its record of guests' sizes before memcoord (what `memcoord restore` returns them to) stays with the run,
        # as systemd's StateDirectory= would give it one, instead of the host's /var/lib/memcoord.
        env.setdefault("STATE_DIRECTORY", str(self.work_dir))
        # Play systemd's part: memcoord reports every tick with STATUS=, so a stalled loop shows up.
        self._notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify_sock.bind(str(self._notify_dir / "notify.sock"))
        self._notify_sock.settimeout(0.5)
        env["NOTIFY_SOCKET"] = str(self._notify_dir / "notify.sock")
        threading.Thread(target=self._read_notify, name="memcoord-notify", daemon=True).start()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self._reader = threading.Thread(target=self._read, name="memcoord-log", daemon=True)
        self._reader.start()
        self._follower = threading.Thread(target=self._follow, name="memcoord-timeline", daemon=True)
        self._follower.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("a", buffering=1) as log:
            for line in self.proc.stdout:
                log.write(line)
                if self.on_line is not None:
                    self.on_line(line)

    def _follow(self) -> None:
        follower = TimelineFollower(self.timeline_path)
        follower.errors = self.timeline_errors
        try:
            while True:
                stopping = self._stop_following.is_set()
                for line in follower.poll():
                    if self.on_tick is not None:
                        self.on_tick(_mono_s(float(line["t_s"])), line)
                    try:
                        actions = mc_timeline.actions(line, str(self.timeline_path))
                    except mc_timeline.TimelineError as exc:  # e.g. a kind this checkout does not know
                        self.timeline_errors.append(str(exc))
                        continue
                    for act in actions:
                        if act.applied:
                            self._took(_action(act))
                if stopping:  # one last read after the process ended: its final tick's actions
                    return
                self._stop_following.wait(FOLLOW_INTERVAL_S)
        finally:
            follower.close()

    def _took(self, a: CoordinatorAction) -> None:
        self.actions.append(a)
        if self.on_action is not None:
            self.on_action(a)

    def reload(self, config: dict[str, Any], timeout_s: float = 15.0) -> None:
        """Rewrite the config file and SIGHUP memcoord (its documented reload); wait until it took it."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("memcoord is not running")
        self.config = with_timeline(config, self.timeline_path)
        self.config_path.write_text(tomli_w.dumps(self.config))
        ok_before = self.log_text().count("config reloaded from")
        failed_before = self.log_text().count("config reload failed")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while self.log_text().count("config reloaded from") == ok_before:
            if self.log_text().count("config reload failed") > failed_before or time.monotonic() > deadline:
                raise RuntimeError(f"memcoord did not reload its config:\n{self.log_text()[-2000:]}")
            time.sleep(0.1)

    def _read_notify(self) -> None:
        sock = self._notify_sock
        while sock is not None and sock.fileno() != -1:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.decode(errors="replace").splitlines():
                if line.startswith("STATUS="):
                    self.status = line.removeprefix("STATUS=")
                    self.status_times_mono_s.append(now)
                    if self.on_status is not None:
                        self.on_status(now, self.status)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM (memcoord's clean shutdown), SIGKILL if it hangs; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._stop_following.set()
        if self._follower is not None:
            self._follower.join(timeout=5)
        if self._notify_sock is not None:
            with contextlib.suppress(OSError):
                self._notify_sock.close()
        shutil.rmtree(self._notify_dir, ignore_errors=True)
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
