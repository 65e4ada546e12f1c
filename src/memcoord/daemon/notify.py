"""sd_notify for systemd's Type=notify: readiness, status line, watchdog, reload and stop.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the same code runs in a terminal.
"""

from __future__ import annotations

import logging
import os
import time

from systemd import daemon

log = logging.getLogger("memcoord")

# sd_notify is C code, so Python does not retry it after a signal (PEP 475 covers only Python's own calls): a
# SIGHUP landing in its sendmsg() raises InterruptedError. A few retries cover a storm of signals.
EINTR_RETRIES = 10


class Notifier:
    def __init__(self) -> None:
        self._failed: set[str] = set()

    def _send(self, *lines: str) -> None:
        # An empty NOTIFY_SOCKET means "not under systemd", but sd_notify would fail on it with EINVAL.
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        message = "\n".join(lines)
        for _ in range(EINTR_RETRIES):
            try:
                daemon.notify(message)
                return
            except InterruptedError:
                continue
            except OSError as exc:
                # Telling systemd is not worth the coordination of the guests: report once per kind of failure.
                # A watchdog ping that never arrives still gets the process restarted, as it should.
                self._report(f"{exc.strerror or exc}")
                return
        self._report(f"interrupted by signals {EINTR_RETRIES} times in a row")

    def _report(self, why: str) -> None:
        if why not in self._failed:
            self._failed.add(why)
            log.error("cannot notify systemd (%s): %s", os.environ.get("NOTIFY_SOCKET"), why)

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def reloading(self) -> None:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1; older ones ignore it.
        self._send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        if self.watchdog_interval_s() is not None:
            self._send("WATCHDOG=1")

    @staticmethod
    def watchdog_interval_s() -> float | None:
        """systemd's WatchdogSec for this process, or None when the watchdog is off."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1_000_000
        except ValueError:
            return None
