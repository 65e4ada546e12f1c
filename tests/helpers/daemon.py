"""A running `memcoord run` on the simulated host, for the observability tests (status, metrics, monitor, plot)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SIM_GUESTS = {"sim-hog", "sim-idle", "sim-busy"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20.0, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout_s} s")
        time.sleep(every_s)


class Daemon:
    """`memcoord run --config` on sim:///demo with the state file (and optionally metrics, timeline) in tmp."""

    def __init__(self, tmp: Path, interval_s: float = 0.2, extra: str = "", uri: str = "sim:///demo") -> None:
        self.tmp = tmp
        self.state_path = tmp / "run" / "state.json"
        self.config_path = tmp / "memcoord.toml"
        self.config_path.write_text(
            f'[libvirt]\nuri = "{uri}"\n[loop]\ninterval_s = {interval_s}\n'
            f'[status]\npath = "{self.state_path}"\n{extra}'
        )
        self.log_path = tmp / "memcoord.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memcoord.cli", "run", "--config", str(self.config_path)],
            stderr=self._log,
            env={k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")},
        )

    def view(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def wait_ticks(self, ticks: int, timeout_s: float = 20.0) -> dict[str, Any]:
        """The published view once the daemon has done at least `ticks` ticks."""
        return wait_for(lambda: (v := self.view()) is not None and v["ticks"] >= ticks and v, timeout_s)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text()
