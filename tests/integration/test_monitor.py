"""`memcoord monitor` in a real terminal: tmux at 120x30, read back with capture-pane."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.daemon import SIM_GUESTS, Daemon, wait_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is a Debian package of `make deps`")

WIDTH, HEIGHT = 120, 30


class Terminal:
    """A detached tmux session on its own server socket, so it never touches anyone's tmux."""

    def __init__(self, tmp: Path, command: str) -> None:
        self.socket = str(tmp / "tmux.sock")
        self.rc_path = tmp / "monitor.rc"
        wrapped = f"{command}; echo $? > {shlex.quote(str(self.rc_path))}"
        self.tmux("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), "-s", "mon", wrapped)

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TERM": "xterm-256color"}
        env.pop("TMUX", None)
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, env=env, timeout=10)

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "mon").stdout.splitlines()

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", "mon").returncode == 0

    def exit_code(self) -> int:
        wait_for(lambda: self.rc_path.exists() and self.rc_path.read_text().strip(), timeout_s=10)
        return int(self.rc_path.read_text())

    def close(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path, interval_s=0.2)
    d.wait_ticks(3)
    yield d
    d.stop()


def monitor_command(state: Path) -> str:
    return f"{shlex.quote(sys.executable)} -m memcoord.cli monitor --interval 0.3 --state {shlex.quote(str(state))}"


def row(screen: list[str], guest: str) -> list[str]:
    return next(line.split() for line in screen if line.startswith(guest + " "))


def test_monitor_shows_the_guests_and_redraws_in_place(tmp_path: Path, daemon: Daemon):
    term = Terminal(tmp_path, monitor_command(daemon.state_path))
    try:
        first = wait_for(lambda: (s := term.screen()) and all(any(g in line for line in s) for g in SIM_GUESTS) and s)
        assert first[0].startswith(f"memcoord pid {daemon.proc.pid}")
        header = next(line for line in first if line.startswith("DOMAIN"))
        assert header.split()[:3] == ["DOMAIN", "CLASS", "CURRENT"]
        # The numbers on screen are the daemon's: each guest's max as published.
        for guest in SIM_GUESTS:
            assert row(first, guest)[3] == "2048"
        ticks = int(first[0].split(" ticks")[0].rsplit(" ", 1)[1])
        # It redraws in place: the same one-screen layout, later figures, header still on the first line.
        later = wait_for(lambda: (s := term.screen()) and f" {ticks} ticks" not in s[0] and "ticks" in s[0] and s)
        assert later[0].startswith("memcoord pid")
        assert len(later) <= HEIGHT and sum("DOMAIN" in line for line in later) == 1
        assert any("q to quit" in line for line in later)
        term.tmux("send-keys", "-t", "mon", "q")
        assert term.exit_code() == 0
        wait_for(lambda: not term.alive(), timeout_s=10)
    finally:
        term.close()


def test_ctrl_c_quits_cleanly(tmp_path: Path, daemon: Daemon):
    term = Terminal(tmp_path, monitor_command(daemon.state_path))
    try:
        wait_for(lambda: any("sim-hog" in line for line in term.screen()))
        term.tmux("send-keys", "-t", "mon", "C-c")
        assert term.exit_code() == 0
    finally:
        term.close()


def test_monitor_waits_for_a_daemon_that_is_not_there(tmp_path: Path):
    state = tmp_path / "run" / "state.json"
    term = Terminal(tmp_path, monitor_command(state))
    try:
        screen = wait_for(lambda: (s := term.screen()) and "not running" in s[0] and s)
        assert "no state file" in screen[0]
        # It keeps watching: a daemon started now shows up on the same screen.
        d = Daemon(tmp_path)
        try:
            d.wait_ticks(2)
            wait_for(lambda: any(line.startswith("sim-idle ") for line in term.screen()))
        finally:
            d.stop()
        wait_for(lambda: "not running" in term.screen()[0])
        term.tmux("send-keys", "-t", "mon", "q")
        assert term.exit_code() == 0
    finally:
        term.close()
