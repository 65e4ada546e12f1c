"""Thousands of SIGHUP and SIGTERM against a running `memcoord run` (simulated host): no hang, a clean exit.

A handler runs in the main thread between two bytecodes, possibly inside the loop's own sleep. A handler that
takes a lock the interrupted code already holds (threading.Event.set() inside Event.wait()) deadlocks the
daemon, and one interrupted by the next signal while waiting for that lock recurses until RecursionError kills
it; sd_notify interrupted by a signal raised InterruptedError. Each lost the daemon within a 2 s storm.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.notify import NotifySocket

CONFIG = '[libvirt]\nuri = "sim:///demo"\n[loop]\ninterval_s = 0.01\n[status]\npath = "{state}"\n'
STORM_S = 2.0
MAX_GAP_S = 0.0005  # random gaps, so that signals land everywhere in the loop, not in step with it
EXIT_WITHIN_S = 15.0


def ticks(state: Path) -> int:
    try:
        return int(json.loads(state.read_text())["ticks"])
    except (OSError, ValueError):
        return 0


# Under systemd (sd_notify on every tick) and in a terminal: without the notify calls the loop spends more of
# its time in its sleep, where a lock-taking handler deadlocks.
@pytest.mark.parametrize("under_systemd", [True, False], ids=["notify", "terminal"])
def test_a_signal_storm_neither_hangs_nor_kills_and_the_exit_is_clean(
    tmp_path: Path, notify_socket: NotifySocket, under_systemd: bool
):
    config = tmp_path / "memcoord.toml"
    state = tmp_path / "state.json"
    config.write_text(CONFIG.format(state=state))
    # PYTHONFAULTHANDLER: if it hangs, the SIGABRT below writes where to the log.
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    env.pop("NOTIFY_SOCKET", None)
    if under_systemd:
        env.update(NOTIFY_SOCKET=str(notify_socket.path), WATCHDOG_USEC="5000000")
    log_path = tmp_path / "memcoord.log"
    # A file, not a pipe: every reload logs a line, and a pipe nobody reads would block the daemon on write.
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "memcoord.cli", "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    rng = random.Random(14)
    sent = 0
    try:
        deadline_s = time.monotonic() + 20
        while ticks(state) < 3:
            assert time.monotonic() < deadline_s and proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.05)
        started_s = time.monotonic()
        while time.monotonic() - started_s < STORM_S and proc.poll() is None:
            os.kill(proc.pid, signal.SIGHUP)
            sent += 1
            time.sleep(rng.random() * MAX_GAP_S)
            if sent % 200 == 0:
                notify_socket.drain()  # as systemd does: a full notify queue would block the daemon
        assert proc.poll() is None, f"memcoord died in the storm:\n{log_path.read_text()[-3000:]}"
        # Still ticking after the storm.
        seen = ticks(state)
        deadline_s = time.monotonic() + 10
        while ticks(state) < seen + 3:
            assert time.monotonic() < deadline_s, f"no tick after the storm:\n{log_path.read_text()[-3000:]}"
            notify_socket.drain()
        for _ in range(500):
            os.kill(proc.pid, signal.SIGHUP)
            os.kill(proc.pid, signal.SIGTERM)
            sent += 2
        deadline_s = time.monotonic() + EXIT_WITHIN_S
        while proc.poll() is None and time.monotonic() < deadline_s:
            notify_socket.drain()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGABRT)
            proc.wait()
            raise AssertionError(f"memcoord hung after a signal storm; log tail:\n{log_path.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = log_path.read_text()
    reloads = err.count("config reloaded from")
    print(f"{sent} signals in {STORM_S:.0f} s + 1000 at the end: {reloads} reloads, exit {proc.returncode}")
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert reloads > 10, err[-3000:]  # the storm did reach the loop: SIGHUPs coalesce into reloads between ticks
    assert "memcoord stopping" in err
    if under_systemd:
        notify_socket.wait_for(lambda m: m == "STOPPING=1")
