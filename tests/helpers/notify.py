"""A real sd_notify socket, like the one systemd gives a Type=notify service."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    """A unix datagram socket bound where NOTIFY_SOCKET points; collects every message the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> None:
        """Take what arrives within the socket timeout. Bounded in time, not "until quiet": a service ticking
        faster than the timeout is never quiet."""
        deadline = time.monotonic() + self.sock.gettimeout()
        while time.monotonic() < deadline:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except (TimeoutError, BlockingIOError):
                return

    def wait_for(self, predicate, timeout_s: float = 20.0) -> str:
        """The first message (from the start) matching predicate; waits for one to arrive."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for msg in self.messages[seen:]:
                if predicate(msg):
                    return msg
            seen = len(self.messages)
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching sd_notify message in {timeout_s} s; got {self.messages[-10:]}")
            self.drain()

    def close(self) -> None:
        self.sock.close()
