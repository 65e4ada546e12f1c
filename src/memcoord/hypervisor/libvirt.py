"""The real adapter: one bulk getAllDomainStats per tick, setMemory per change, reconnect on loss.

Units: balloon.* stats and setMemory are KiB; psutil reports bytes. A keepalive on the connection bounds how
long a call can hang when libvirtd stops answering (it needs libvirt's event loop, run in a daemon thread).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import libvirt
import psutil

from ..model import ApplyResult, Change, DomainStats, HostStats, Snapshot
from . import HypervisorError

KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
# open() has no keepalive yet: a daemon that accepts but never answers (stopped, deadlocked) would hang it
# forever. It runs in a thread and the tick gives up after as long as keepalive allows any other call.
CONNECT_TIMEOUT_S = KEEPALIVE_INTERVAL_S * (KEEPALIVE_COUNT + 1)

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _start_event_loop() -> None:
    """libvirt's default event loop, once per process: keepalive needs it, and it must precede open()."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _quiet_libvirt_errors() -> None:
    """libvirt prints every error to stderr by default; we report them ourselves, once."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class _Opener:
    """libvirt.open() in a daemon thread; a later tick collects a connection that was slow to come."""

    def __init__(self, uri: str) -> None:
        self.done = threading.Event()
        self.conn: libvirt.virConnect | None = None
        self.error = ""
        threading.Thread(target=self._run, args=(uri,), name="libvirt-open", daemon=True).start()

    def _run(self, uri: str) -> None:
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            self.error = exc.get_error_message() or "unknown error"
        self.done.set()


def is_local(uri: str) -> bool:
    return not urlsplit(uri).hostname


def _domain_stats(name: str, stats: dict[str, int]) -> DomainStats:
    def opt(key: str) -> int | None:
        value = stats.get(key)
        return int(value) if value is not None else None

    return DomainStats(
        name=name,
        current_kib=int(stats.get("balloon.current", 0)),
        max_kib=int(stats.get("balloon.maximum", 0)),
        unused_kib=opt("balloon.unused"),
        usable_kib=opt("balloon.usable"),
        available_kib=opt("balloon.available"),
        rss_kib=opt("balloon.rss"),
        last_update_s=opt("balloon.last-update"),
    )


class LibvirtHypervisor:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._opener: _Opener | None = None
        self._domains: dict[str, libvirt.virDomain] = {}
        # (uuid, domain id, period): a restarted domain gets a new id and needs its period set again.
        self._period_set: set[tuple[str, int, int]] = set()
        _quiet_libvirt_errors()
        _start_event_loop()

    def _connection(self) -> libvirt.virConnect:
        if self._conn is not None:
            return self._conn
        if self._opener is None:
            self._opener = _Opener(self.uri)
        if not self._opener.done.wait(CONNECT_TIMEOUT_S):
            raise HypervisorError(f"cannot connect to {self.uri}: no answer within {CONNECT_TIMEOUT_S} s")
        opener, self._opener = self._opener, None
        if opener.conn is None:
            raise HypervisorError(f"cannot connect to {self.uri}: {opener.error}")
        conn = opener.conn
        # Drivers without keepalive (test://, embedded ones) refuse it; they cannot hang on a dead daemon.
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        self._conn = conn
        self._period_set.clear()
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._domains = {}
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def _host(self, conn: libvirt.virConnect) -> HostStats:
        if is_local(self.uri):
            vm = psutil.virtual_memory()
            return HostStats(available_kib=vm.available // 1024, total_kib=vm.total // 1024)
        node = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
        available_kib = node.get("free", 0) + node.get("buffers", 0) + node.get("cached", 0)
        return HostStats(available_kib=available_kib, total_kib=node.get("total", 0))

    def sample(self) -> Snapshot:
        conn = self._connection()
        try:
            records = conn.getAllDomainStats(
                libvirt.VIR_DOMAIN_STATS_BALLOON, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
            )
            host = self._host(conn)
        except libvirt.libvirtError as exc:
            self._drop()
            raise HypervisorError(f"{self.uri}: {exc.get_error_message()}") from None
        taken_at_s = time.time()
        self._domains = {dom.name(): dom for dom, _stats in records}
        domains = tuple(_domain_stats(dom.name(), stats) for dom, stats in records)
        return Snapshot(host=host, domains=domains, taken_at_s=taken_at_s)

    def ensure_stats_period(self, names: Iterable[str], period_s: int) -> list[str]:
        failures = []
        for name in names:
            dom = self._domains.get(name)
            if dom is None:
                continue
            key = (dom.UUIDString(), dom.ID(), period_s)
            if key in self._period_set:
                continue
            try:
                dom.setMemoryStatsPeriod(period_s, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                failures.append(f"{name}: cannot set the balloon stats period: {exc.get_error_message()}")
            self._period_set.add(key)
        return failures

    def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        results = []
        for change in changes:
            dom = self._domains.get(change.domain)
            if dom is None:
                results.append(ApplyResult(change, "domain is gone"))
                continue
            try:
                dom.setMemoryFlags(change.to_kib, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                results.append(ApplyResult(change, exc.get_error_message()))
            else:
                results.append(ApplyResult(change))
        return results

    def close(self) -> None:
        self._drop()
