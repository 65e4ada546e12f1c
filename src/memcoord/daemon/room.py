"""make-room, the daemon's side: a unix socket where root (a libvirt hook before a VM starts) or an admin asks for
N MiB above the host guard, and the reservations the daemon holds for them.

The daemon stays the one decision maker: a request only sets what the host keeps back (`HostStats.reserved_kib`,
filled into each tick's snapshot by `reserved_kib()`), and the policy relieves guests that can spare memory (never
below their low line or floor) until the host's budget covers it. After each tick the asker hears how far the host
still is from the room (`answer()`); it gets its final answer when the room is there, or when its wait is over
("short", with what is missing). The reservation outlives the answer: it is held for `[room] hold_s`, and one made
for a domain shrinks as that domain's QEMU takes the memory (its RSS), so a booting guest is not counted twice.

Who may ask: the socket is mode 0660, owned by the daemon's user and `[status] group`; on top of that every
connection's peer credentials (SO_PEERCRED, and SO_PEERGROUPS for its supplementary groups) are checked: root, the
daemon's own user, or a member of that group. Nobody else. The socket is served from the loop's own wait between
ticks (no thread): every socket is non-blocking, a request is one short JSON line, and an asker that says nothing
or reads nothing is dropped, so no asker can hold a tick up.

Protocol (JSON lines). Request: {"kib": int, "domain": str | null, "wait_s": float}; kib is what the asker needs
(for a domain: its memory; the daemon adds `host.guest_overhead_mib`). Answers: {"state": "waiting", "short_kib"}
after each tick, then one of {"state": "room", "held_kib", "hold_s"}, {"state": "short", "short_kib"} or
{"state": "refused", "error"}.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memcoord.core.model import Snapshot, kib_to_mib, mib_to_kib
from memcoord.core.room import Reservation, live, reserved_kib

if TYPE_CHECKING:
    from memcoord.core.config import Config

log = logging.getLogger("memcoord")

REQUEST_MAX_BYTES = 4096
# An asker must send its request this soon after connecting.
REQUEST_WAIT_S = 5.0
MAX_ASKERS = 16
MAX_DOMAIN_NAME = 256
MAX_KIB = 1 << 40  # 1 PiB: no host has more; a larger figure is a mistake
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+; not in Python's socket module
NGROUPS_MAX = 65536


@dataclass
class _Asker:
    sock: socket.socket
    who: str
    connected_s: float
    buffer: bytes = b""
    reservation: Reservation | None = None
    answer_by_s: float = 0.0
    started_s: float = 0.0
    refused: str | None = None


def peer(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket, as the kernel recorded it."""
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid, gid


def peer_groups(sock: socket.socket) -> set[int] | None:
    """The peer's supplementary groups (SO_PEERGROUPS), None where the kernel cannot tell."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * NGROUPS_MAX)
    except OSError:
        return None
    return set(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) - len(raw) % 4]))


def may_ask(uid: int, gid: int, groups: set[int] | None, group_gid: int | None) -> bool:
    """Root, the daemon's own user, or a member of [status] group (primary or supplementary)."""
    if uid in (0, os.geteuid()):
        return True
    if group_gid is None:
        return False
    if gid == group_gid or (groups is not None and group_gid in groups):
        return True
    if groups is None:  # no SO_PEERGROUPS: the group database says who is a member
        try:
            name = pwd.getpwuid(uid).pw_name
            return name in grp.getgrgid(group_gid).gr_mem
        except KeyError:
            return False
    return False


def parse_request(line: bytes, hold_s: float) -> tuple[int, str | None, float]:
    """(kib, domain, wait_s) from a request line; ValueError naming what is wrong."""
    try:
        req = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("request is not JSON") from None
    if not isinstance(req, dict):
        raise ValueError("request is not a JSON object")
    kib, domain, wait_s = req.get("kib"), req.get("domain"), req.get("wait_s", 0)
    if not isinstance(kib, int) or isinstance(kib, bool) or not 0 < kib <= MAX_KIB:
        raise ValueError(f"kib must be a whole number of KiB above 0, not {kib!r}")
    if domain is not None and (not isinstance(domain, str) or not 0 < len(domain) <= MAX_DOMAIN_NAME):
        raise ValueError(f"domain must be a domain name, not {domain!r}")
    if not isinstance(wait_s, (int, float)) or isinstance(wait_s, bool) or not 0 <= wait_s <= hold_s:
        raise ValueError(f"wait_s must be between 0 and [room] hold_s ({hold_s:g}), not {wait_s!r}")
    return kib, domain, float(wait_s)


class RoomDesk:
    """The make-room socket and the reservations it made. Driven by the service: `fds()` and `handle()` in its
    wait between ticks, `reserved_kib()` for each tick's snapshot, `answer()` after each tick."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.path = ""
        self.group = ""
        self.hold_s = 120.0
        self.overhead_kib = 0
        self._group_gid: int | None = None
        self._listener: socket.socket | None = None
        self._askers: dict[int, _Asker] = {}
        self.reservations: list[Reservation] = []

    # -- the socket -----------------------------------------------------------------------------------------
    def configure(self, config: Config) -> None:
        """Open (or move) the socket for this config; a socket that cannot be opened is logged, not fatal."""
        self.hold_s = config.room.hold_s
        self.overhead_kib = mib_to_kib(config.host.guest_overhead_mib)
        if (config.room.socket, config.status.group) == (self.path, self.group) and (
            self._listener is not None or not self.path
        ):
            return
        self.close()
        self.path, self.group = config.room.socket, config.status.group
        self._group_gid = grp.getgrnam(self.group).gr_gid if self.group else None
        if not self.path:
            return
        path = Path(self.path)
        listener = None
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a socket left by an earlier daemon: nobody answers on it
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            # Created closed (umask), opened to the group only once it has its group.
            old_umask = os.umask(0o177)
            try:
                listener.bind(self.path)
            finally:
                os.umask(old_umask)
            if self._group_gid is not None:
                os.chown(self.path, -1, self._group_gid)
            os.chmod(self.path, 0o660)
            listener.listen(MAX_ASKERS)
        except OSError as exc:
            log.error("make-room socket %s not opened: %s (make-room requests are refused)", self.path, exc)
            if listener is not None:
                listener.close()
            return
        self._listener = listener
        log.info("make-room requests on %s", self.path)

    def fds(self) -> list[int]:
        """What the loop's wait watches: the listener and every asker still talking."""
        if self._listener is None:
            return []
        return [self._listener.fileno(), *self._askers]

    def close(self) -> None:
        """Close the socket and every asker's connection (the reservations stay: they are the host's state)."""
        for fd in list(self._askers):
            self._drop(fd)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def handle(self, readable: set[int]) -> bool:
        """Accept new askers and read their requests; True when a new reservation was made (the loop ticks now)."""
        made = False
        if self._listener is not None and self._listener.fileno() in readable:
            self._accept()
        for fd in list(readable & set(self._askers)):
            made |= self._read(fd)
        self._drop_silent()
        return made

    def _drop_silent(self) -> None:
        """An asker that sent no request within REQUEST_WAIT_S gives up its place."""
        now_s = self.clock()
        for fd, asker in list(self._askers.items()):
            if asker.reservation is None and now_s - asker.connected_s > REQUEST_WAIT_S:
                self._drop(fd)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("make-room: accept failed: %s", exc)
                return
            sock.setblocking(False)
            pid, uid, gid = peer(sock)
            if len(self._askers) >= MAX_ASKERS:
                sock.close()
                log.warning("make-room: pid %d, uid %d not heard: %d requests already open", pid, uid, MAX_ASKERS)
                continue
            asker = _Asker(sock, f"pid {pid}, uid {uid}", self.clock())
            if not may_ask(uid, gid, peer_groups(sock), self._group_gid):
                # Answered once its request is read: closing on unread data would reset the connection before
                # the asker could read why.
                asker.refused = "permission denied: root, memcoord's user or [status] group only"
            self._askers[sock.fileno()] = asker

    def _read(self, fd: int) -> bool:
        asker = self._askers[fd]
        try:
            data = asker.sock.recv(REQUEST_MAX_BYTES)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:  # the asker hung up (gave up waiting, or was killed): its reservation stays held
            self._drop(fd)
            return False
        if asker.reservation is not None:
            return False  # one request per connection; anything more is ignored
        asker.buffer += data
        if b"\n" not in asker.buffer:
            if len(asker.buffer) > REQUEST_MAX_BYTES:
                self._refuse(fd, "request too long")
            return False
        line = asker.buffer.split(b"\n", 1)[0]
        if asker.refused is not None:
            self._refuse(fd, asker.refused)
            return False
        try:
            kib, domain, wait_s = parse_request(line, self.hold_s)
        except ValueError as exc:
            self._refuse(fd, str(exc))
            return False
        want_kib = kib + (self.overhead_kib if domain is not None else 0)
        now_s = self.clock()
        reservation = Reservation(want_kib, domain, now_s + self.hold_s)
        self.reservations.append(reservation)
        asker.reservation, asker.started_s, asker.answer_by_s = reservation, now_s, now_s + wait_s
        log.info(
            "make-room: %s asks for %.0f MiB%s: held above the guard for up to %.0f s",
            asker.who,
            kib_to_mib(want_kib),
            f" for {domain} (its memory and QEMU's overhead)" if domain else "",
            self.hold_s,
            extra={"MEMCOORD_EVENT": "make-room", **({"MEMCOORD_DOMAIN": domain} if domain else {})},
        )
        return True

    def _refuse(self, fd: int, error: str) -> None:
        asker = self._askers[fd]
        log.warning("make-room: refused %s: %s", asker.who, error)
        self._send_now(asker.sock, {"state": "refused", "error": error})
        self._drop(fd)

    @staticmethod
    def _send_now(sock: socket.socket, message: dict[str, Any]) -> bool:
        """One answer line, or nothing when the asker does not read (its buffer is full): never blocks."""
        try:
            sock.send((json.dumps(message) + "\n").encode())
        except OSError:
            return False
        return True

    def _drop(self, fd: int) -> None:
        """Close an asker's connection, reading first what it sent and was not read (closing on unread data
        would reset the connection, and the asker could lose the answer just sent)."""
        asker = self._askers.pop(fd, None)
        if asker is not None:
            with contextlib.suppress(OSError):
                while asker.sock.recv(REQUEST_MAX_BYTES):
                    pass
            asker.sock.close()

    # -- the reservations -----------------------------------------------------------------------------------
    def starting(self) -> frozenset[str]:
        """The domains whose asker still waits for its room: domains about to start (their hook is running)."""
        return frozenset(a.reservation.domain for a in self._askers.values() if a.reservation and a.reservation.domain)

    def reserved_kib(self, snapshot: Snapshot) -> int:
        """What the host holds above its guard for this snapshot (see core/room.py). Expired and fulfilled
        reservations end here."""
        now_s = self.clock()
        still = live(self.reservations, snapshot, now_s)
        for r in self.reservations:
            if r not in still and now_s >= r.until_s:
                log.info("make-room: %.0f MiB%s no longer held (%.0f s passed)", kib_to_mib(r.want_kib),
                         f" for {r.domain}" if r.domain else "", self.hold_s)  # fmt: skip
        self.reservations = still
        return reserved_kib(still, snapshot)

    def answer(self, snapshot: Snapshot | None, budget_kib: int | None) -> None:
        """After a tick: tell each waiting asker how far the host is from its room. budget_kib: the host's
        budget with the reservations counted (host available - guard - reserved - granted but not backed); None
        when the tick did not reach the hypervisor (then only askers whose wait is over hear, "short")."""
        self._drop_silent()
        now_s = self.clock()
        for fd, asker in list(self._askers.items()):
            r = asker.reservation
            if r is None:
                continue
            held_kib = r.held_kib(snapshot) if snapshot is not None else r.want_kib
            short_kib = held_kib if budget_kib is None else min(held_kib, max(0, -budget_kib))
            took_s = now_s - asker.started_s
            what = f"{kib_to_mib(r.want_kib):.0f} MiB" + (f" for {r.domain}" if r.domain else "")
            if budget_kib is not None and short_kib == 0:
                log.info("make-room: room for %s after %.1f s", what, took_s, extra={"MEMCOORD_EVENT": "make-room"})
                self._send_now(asker.sock, {"state": "room", "held_kib": held_kib, "hold_s": self.hold_s})
                self._drop(fd)
            elif now_s >= asker.answer_by_s:
                log.warning(
                    "make-room: %s: %.0f MiB short after %.1f s (guests cannot give more without going below their"
                    " low line; still held for %.0f s)",
                    what,
                    kib_to_mib(short_kib),
                    took_s,
                    max(0.0, r.until_s - now_s),
                    extra={"MEMCOORD_EVENT": "make-room"},
                )
                self._send_now(asker.sock, {"state": "short", "short_kib": short_kib})
                self._drop(fd)
            elif not self._send_now(asker.sock, {"state": "waiting", "short_kib": short_kib}):
                self._drop(fd)

    def held_view(self, snapshot: Snapshot | None) -> list[dict[str, Any]]:
        """The live reservations, for the state file."""
        now_s = self.clock()
        return [
            {
                "domain": r.domain,
                "want_kib": r.want_kib,
                "held_kib": r.held_kib(snapshot) if snapshot is not None else r.want_kib,
                "ends_in_s": round(max(0.0, r.until_s - now_s), 1),
            }
            for r in self.reservations
        ]
