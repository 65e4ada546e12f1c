"""The real adapter: one bulk getAllDomainStats per tick, setMemory per change, reconnect on loss.

Units: balloon.* stats and setMemory are KiB; psutil reports bytes.

Two things can hang a libvirt call, and neither may stall the coordination of every other guest: libvirtd
itself (a keepalive on the connection closes it, which needs libvirt's event loop, run in a daemon thread), and
one guest's QEMU monitor (libvirtd is fine but waits on that guest forever). For the second, every call runs in
a thread of its own and is given up after CALL_TIMEOUT_S, and the bulk stats call asks for NOWAIT, so later
ticks skip a guest whose monitor is still busy instead of queueing behind it: that guest shows no guest stats,
and memcoord leaves guests without stats alone. On top of that, every call of a tick shares the tick's deadline
(see the port): a call is given up when it comes, and none is started after it.

Setting a domain's stats period is retried with backoff until it works: until then the guest reports no fresh
stats and memcoord leaves it alone, so a single lost attempt must not leave it uncoordinated for good.

Each domain's own settings (memcoord metadata, min_guarantee; see domain_settings.py) come from its XML, which
the bulk stats call does not return: it is read once per domain and again on libvirt's metadata-change and
lifecycle events, after a reconnect and on a slow timer, in at most SETTINGS_READ_BUDGET_S of a tick.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit
from xml.etree import ElementTree

import libvirt
import psutil

from memcoord.core.model import NO_SETTINGS, ApplyResult, Change, DomainSettings, DomainStats, HostStats, Snapshot
from memcoord.core.port import DOMAIN_GONE, SKIPPED_DEADLINE, DeadlineSpent, HypervisorError
from memcoord.hypervisor.domain_settings import Parsed, SettingsCache, parse_domain_xml

log = logging.getLogger("memcoord")

KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
# open() has no keepalive yet: a daemon that accepts but never answers (stopped, deadlocked) would hang it
# forever. The tick gives up after as long as keepalive allows any other call; a later tick collects it.
CONNECT_TIMEOUT_S = KEEPALIVE_INTERVAL_S * (KEEPALIVE_COUNT + 1)
CALL_TIMEOUT_S = 10.0
# Calls given up on still hold a thread each until libvirt answers; past this many, start a new connection.
MAX_ABANDONED_CALLS = 4
# A stats period that could not be set is tried again after 2 s, then 4, 8 ... up to every 60 s.
PERIOD_RETRY_START_S = 2.0
PERIOD_RETRY_MAX_S = 60.0
# What one tick may spend reading domains' XML for their settings; the rest waits for the next tick (a host
# with thousands of guests, all new at start, is read over a few ticks).
SETTINGS_READ_BUDGET_S = 1.0

T = TypeVar("T")

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


class _Call(Generic[T]):
    """One libvirt call in a daemon thread of its own, so that the tick can stop waiting for it."""

    def __init__(self, what: str, fn: Callable[[], T]) -> None:
        self.what = what
        self.done = threading.Event()
        self._result: list[T] = []
        self._error: list[BaseException] = []
        threading.Thread(target=self._run, args=(fn,), name=f"libvirt {what}", daemon=True).start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._result.append(fn())
        except BaseException as exc:  # handed to the waiting thread by wait()
            self._error.append(exc)
        finally:
            self.done.set()

    def succeeded(self) -> bool:
        """Answered, without an error (a call given up on may still answer later)."""
        return self.done.is_set() and not self._error

    def wait(self, timeout_s: float) -> T:
        """The call's result or its exception; TimeoutError when it has not answered in timeout_s."""
        if not self.done.wait(timeout_s):
            raise TimeoutError(f"{self.what}: no answer in {timeout_s:.0f} s")
        if self._error:
            raise self._error[0]
        return self._result[0]


@dataclass(frozen=True)
class _PeriodRetry:
    """A domain whose stats period is not set yet: when to try again, how long the last wait was, why."""

    name: str
    next_at_s: float
    backoff_s: float
    error: str
    # The last attempt when it got no answer: while it is still unanswered (the guest's monitor is hung and
    # holds the domain's job), another attempt would only queue behind it and cost the tick its deadline.
    unanswered: _Call[object] | None = None


# Errors that mean the connection itself is gone or unusable (libvirtd died, restarted, the socket broke).
CONNECTION_ERROR_CODES = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_CANCELLED,
    }
)


def connection_lost(conn: libvirt.virConnect, exc: libvirt.libvirtError) -> bool:
    """Whether a call's error means the connection is gone (reconnect) rather than that one call failed."""
    if exc.get_error_code() in CONNECTION_ERROR_CODES or exc.get_error_domain() == libvirt.VIR_FROM_RPC:
        return True
    try:
        return not conn.isAlive()  # local state of the client, no round trip to libvirtd
    except libvirt.libvirtError:
        return True


def _gone(exc: libvirt.libvirtError) -> bool:
    """The domain went away between the sample and this call: undefined (no domain), or destroyed while the
    handle lived on (a transient domain answers "operation not valid: domain is not running")."""
    code = exc.get_error_code()
    return code == libvirt.VIR_ERR_NO_DOMAIN or (
        code == libvirt.VIR_ERR_OPERATION_INVALID and "not running" in (exc.get_error_message() or "")
    )


def is_local(uri: str) -> bool:
    return not urlsplit(uri).hostname


PSI_MEMORY_PATH = Path("/proc/pressure/memory")


def memory_pressure_some_avg10(path: Path = PSI_MEMORY_PATH) -> float | None:
    """The host's PSI memory `some avg10` (percent of the last 10 s in which some task waited for memory), read
    from the kernel's file (psutil has no PSI); None where the kernel gives none (no CONFIG_PSI, booted psi=0:
    the file is missing or refuses reads) or the line is not as documented."""
    try:
        with path.open(encoding="ascii") as f:
            for line in f:
                kind, _, fields = line.partition(" ")
                if kind == "some":
                    values = dict(field.split("=", 1) for field in fields.split() if "=" in field)
                    return float(values["avg10"])
    except (OSError, ValueError, KeyError):
        return None
    return None


def domain_stats(name: str, stats: dict[str, int], settings: DomainSettings | None = NO_SETTINGS) -> DomainStats | None:
    """The record as DomainStats; None without current and maximum, which nothing safe can be decided on."""

    def opt(key: str) -> int | None:
        value = stats.get(key)
        return int(value) if value is not None else None

    if not stats.get("balloon.current") or not stats.get("balloon.maximum"):
        return None
    return DomainStats(
        name=name,
        current_kib=int(stats["balloon.current"]),
        max_kib=int(stats["balloon.maximum"]),
        unused_kib=opt("balloon.unused"),
        usable_kib=opt("balloon.usable"),
        available_kib=opt("balloon.available"),
        rss_kib=opt("balloon.rss"),
        last_update_s=opt("balloon.last-update"),
        settings=settings,
    )


def remote_available_kib(node: Mapping[str, int], qemu_rss_kib: int) -> int:
    """Memory available on a host known only by libvirt's node stats (free, buffers, cached: no MemAvailable).

    `cached` holds shmem, and guest RAM backed by memfd or a shared file is shmem: counted whole, a guest touching
    its memory would not lower the host's available memory at all. Every such page is mapped by its QEMU and so
    in that domain's RSS (qemu_rss_kib: the sum over all running domains), so the page cache beyond that sum
    cannot be guest RAM: free + buffers + max(0, cached - qemu_rss_kib). It is a lower bound: where the guests'
    RAM is anonymous (libvirt's default) their RSS is not in `cached`, and the cache counts only beyond it."""
    cached_kib = max(0, node.get("cached", 0) - qemu_rss_kib)
    return node.get("free", 0) + node.get("buffers", 0) + cached_kib


def balloon_period_s(domain_xml: str) -> int | None:
    """The stats period in a domain's live XML: 0 without one (libvirt writes no <stats> for 0), None without
    a balloon device."""
    balloon = ElementTree.fromstring(domain_xml).find("./devices/memballoon")
    if balloon is None or balloon.get("model") == "none":
        return None
    stats = balloon.find("stats")
    return int(stats.get("period", "0")) if stats is not None else 0


def _read_only(uri: str, what: str, fn: Callable[[libvirt.virConnect], T], timeout_s: float) -> T:
    """fn on a read-only connection to uri, given up after timeout_s; HypervisorError naming the URI."""
    _quiet_libvirt_errors()

    def call() -> T:
        conn = libvirt.openReadOnly(uri)
        try:
            return fn(conn)
        finally:
            conn.close()

    try:
        return _Call(what, call).wait(timeout_s)
    except TimeoutError:
        raise HypervisorError(f"{uri}: no answer in {timeout_s:.0f} s") from None
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"{uri}: {exc.get_error_message()}") from None


def defined_domain_names(uri: str, timeout_s: float) -> set[str]:
    """Every domain at uri, running or defined, over a read-only connection given up after timeout_s."""
    return _read_only(uri, "listAllDomains", lambda conn: {dom.name() for dom in conn.listAllDomains(0)}, timeout_s)


def domain_xml(uri: str, name: str, timeout_s: float) -> str:
    """A domain's definition (its inactive XML, what it starts with), read-only, given up after timeout_s."""
    return str(
        _read_only(
            uri, "XMLDesc", lambda conn: conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), timeout_s
        )
    )


class LibvirtHypervisor:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._opening: _Call[libvirt.virConnect] | None = None
        self._domains: dict[str, libvirt.virDomain] = {}
        # (uuid, domain id, period): a restarted domain gets a new id and needs its period set again.
        self._period_set: set[tuple[str, int, int]] = set()
        self._period_retry: dict[tuple[str, int, int], _PeriodRetry] = {}
        self._abandoned: list[_Call[Any]] = []
        self._settings = SettingsCache()
        self._settings_unreadable: dict[str, str] = {}
        self._event_ids: list[int] = []
        _quiet_libvirt_errors()
        _start_event_loop()

    def _connection(self, deadline_s: float | None = None) -> libvirt.virConnect:
        if self._conn is not None:
            return self._conn
        if self._opening is None:
            self._opening = _Call("open", lambda: libvirt.open(self.uri))
        timeout_s: float = CONNECT_TIMEOUT_S
        if deadline_s is not None:
            timeout_s = max(0.0, min(timeout_s, deadline_s - time.monotonic()))
        try:
            conn = self._opening.wait(timeout_s)
        except TimeoutError as exc:
            raise HypervisorError(f"cannot connect to {self.uri}: {exc}") from None  # still opening: next tick
        except libvirt.libvirtError as exc:
            self._opening = None
            raise HypervisorError(f"cannot connect to {self.uri}: {exc.get_error_message()}") from None
        self._opening = None
        # Drivers without keepalive (test://, embedded ones) refuse it; they cannot hang on a dead daemon.
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        self._conn = conn
        self._period_set.clear()
        self._period_retry.clear()
        self._watch_definitions(conn)
        return conn

    def _watch_definitions(self, conn: libvirt.virConnect) -> None:
        """Re-read a domain's settings when libvirt says its metadata or definition changed; what changed while
        there was no connection is read again too."""
        self._settings.mark_all_changed()

        def changed(_conn: libvirt.virConnect, dom: libvirt.virDomain, *_args: object) -> None:
            with contextlib.suppress(libvirt.libvirtError):
                self._settings.mark_changed(dom.UUIDString())

        self._event_ids = []
        for event in (libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE):
            # A driver without events is read on the slow timer only.
            with contextlib.suppress(libvirt.libvirtError):
                self._event_ids.append(conn.domainEventRegisterAny(None, event, changed, None))

    def _drop(self, deadline_s: float | None = None) -> None:
        """Forget the connection; deregister its events and close it in a call of its own, waited for no longer
        than any other call (CALL_TIMEOUT_S, or until the deadline). Both are round trips to libvirtd: a daemon
        that accepts but does not answer holds them until keepalive gives up, or for good when its event loop
        still answers keepalive while its workers hang."""
        conn, self._conn = self._conn, None
        self._domains = {}
        event_ids, self._event_ids = self._event_ids, []
        if conn is None:
            return

        def close() -> None:
            for event_id in event_ids:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(event_id)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

        timeout_s = CALL_TIMEOUT_S
        if deadline_s is not None:
            timeout_s = max(0.0, min(timeout_s, deadline_s - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            _Call("close", close).wait(timeout_s)  # unanswered, it goes on in its thread: the next tick reconnects

    def _bounded(self, what: str, fn: Callable[[], T], deadline_s: float | None = None) -> T:
        """Run one libvirt call, giving up after CALL_TIMEOUT_S or at the deadline, whichever comes first (the
        call goes on in its thread, unheeded); DeadlineSpent without calling when the deadline has passed."""
        timeout_s = CALL_TIMEOUT_S
        if deadline_s is not None:
            timeout_s = min(timeout_s, deadline_s - time.monotonic())
            if timeout_s <= 0:
                raise DeadlineSpent(f"{what}: not called, the tick's deadline was spent")
        self._abandoned = [call for call in self._abandoned if not call.done.is_set()]
        if len(self._abandoned) >= MAX_ABANDONED_CALLS:
            self._abandoned = []
            self._drop(deadline_s)
            raise HypervisorError(f"{self.uri}: {MAX_ABANDONED_CALLS} calls unanswered, reconnecting")
        call = _Call(what, fn)
        try:
            return call.wait(timeout_s)
        except TimeoutError:
            self._abandoned.append(call)
            raise TimeoutError(f"{what}: no answer from {self.uri} in {timeout_s:.1f} s") from None

    def _host(
        self,
        conn: libvirt.virConnect,
        records: Sequence[tuple[libvirt.virDomain, Mapping[str, int]]],
        deadline_s: float | None,
    ) -> HostStats:
        """The host's memory: MemAvailable (psutil) here; on a remote host libvirt's node stats, read by
        remote_available_kib() against what the running domains' QEMUs hold (records: this tick's stats)."""
        if is_local(self.uri):
            vm = psutil.virtual_memory()
            return HostStats(
                available_kib=vm.available // 1024,
                total_kib=vm.total // 1024,
                pressure_some_avg10=memory_pressure_some_avg10(),
            )
        # A remote host's PSI is not in libvirt's node stats: its pressure is not measured (None).
        node = self._bounded(
            "getMemoryStats", lambda: conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS), deadline_s
        )
        # A domain whose RSS libvirt did not give may hold up to its maximum.
        qemu_kib = sum(int(stats.get("balloon.rss") or stats.get("balloon.maximum") or 0) for _dom, stats in records)
        return HostStats(available_kib=remote_available_kib(node, qemu_kib), total_kib=node.get("total", 0))

    @contextlib.contextmanager
    def _errors_as_hypervisor_error(self, conn: libvirt.virConnect, deadline_s: float | None) -> Iterator[None]:
        """A libvirt error or a call with no answer as HypervisorError naming the URI.

        Only a lost connection is worth a new one: dropping a good connection for an error of one call (a domain
        in an odd state, an unsupported stats group) would cost every stats period set on it."""
        try:
            yield
        except libvirt.libvirtError as exc:
            if connection_lost(conn, exc):
                self._drop(deadline_s)
            raise HypervisorError(f"{self.uri}: {exc.get_error_message()}") from None
        except TimeoutError as exc:
            raise HypervisorError(str(exc)) from None

    def sample(self, deadline_s: float | None = None, only: frozenset[str] | None = None) -> Snapshot:
        conn = self._connection(deadline_s)
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        balloon = libvirt.VIR_DOMAIN_STATS_BALLOON
        with self._errors_as_hypervisor_error(conn, deadline_s):
            if only is None:
                records = self._bounded("getAllDomainStats", lambda: conn.getAllDomainStats(balloon, flags), deadline_s)
            else:  # the handles of the last sample: looked up one by one, no lock on any other domain is waited for
                handles = [dom for name, dom in self._domains.items() if name in only]
                records = handles and self._bounded(
                    "domainListGetStats", lambda: conn.domainListGetStats(handles, balloon, flags), deadline_s
                )
            host = self._host(conn, records, deadline_s)
        taken_at_s = time.time()
        self._domains = {dom.name(): dom for dom, _stats in records}
        uuids = {dom.UUIDString(): dom for dom, _stats in records}  # the handle's own, no round trip
        self._read_settings(uuids, deadline_s)
        domains = tuple(
            d
            for dom, stats in records
            if (d := domain_stats(dom.name(), stats, self._settings.get(dom.UUIDString()))) is not None
        )
        return Snapshot(host=host, domains=domains, taken_at_s=taken_at_s)

    def _read_settings(self, doms: Mapping[str, libvirt.virDomain], deadline_s: float | None) -> None:
        """Read the XML of the domains due (new, changed, or not read for a while) within the tick's share for
        it; report each problem in their settings once."""
        self._settings.keep_only(doms)
        for uuid in set(self._settings_unreadable) - set(doms):
            del self._settings_unreadable[uuid]
        started_s = time.monotonic()
        due = self._settings.due(doms, started_s)
        for i, uuid in enumerate(due):
            dom = doms[uuid]
            try:
                # The budget decides whether a read starts; a read once started has the tick's deadline (cut
                # short, it would be abandoned, and abandoned calls cost the connection).
                if time.monotonic() - started_s >= SETTINGS_READ_BUDGET_S:
                    raise DeadlineSpent("settings read budget spent")
                xml_text = self._bounded("XMLDesc", dom.XMLDesc, deadline_s)
            except (DeadlineSpent, TimeoutError, HypervisorError):
                self._settings.retry(due[i:])
                return
            except libvirt.libvirtError as exc:
                if not _gone(exc):
                    self._settings.retry([uuid])
                    error = exc.get_error_message()
                    if self._settings_unreadable.get(uuid) != error:
                        self._settings_unreadable[uuid] = error
                        log.warning(
                            "%s: cannot read its libvirt XML for its settings (kept as last read, or left alone"
                            " until read): %s",
                            dom.name(),
                            error,
                            extra={"MEMCOORD_DOMAIN": dom.name()},
                        )
                continue
            self._settings_unreadable.pop(uuid, None)
            try:
                parsed = parse_domain_xml(dom.name(), xml_text)
            except Exception as exc:  # it promises not to raise; if it ever does, the loop goes on without the guest
                parsed = Parsed(
                    DomainSettings(metadata_invalid=True),
                    (f"{dom.name()}: its settings could not be read ({exc!r}): left alone",),
                )
            for problem in self._settings.store(uuid, parsed, time.monotonic()):
                log.warning("%s", problem, extra={"MEMCOORD_DOMAIN": dom.name(), "MEMCOORD_EVENT": "bad-settings"})

    def domain_names(self, deadline_s: float | None = None) -> set[str]:
        conn = self._connection(deadline_s)
        with self._errors_as_hypervisor_error(conn, deadline_s):
            doms = self._bounded("listAllDomains", lambda: conn.listAllDomains(0), deadline_s)
            return {dom.name() for dom in doms}

    def ensure_stats_period(self, names: Iterable[str], period_s: int, deadline_s: float | None = None) -> list[str]:
        """Set the period once per running domain (a restart gives it a new id). A failure or a call with no
        answer is tried again after a backoff, reported once (returned) and listed by stats_period_failures()
        until it works.

        After one call that got no answer, the rest wait for the next tick: a few hung guests must not add
        CALL_TIMEOUT_S each to one tick. A call the deadline leaves no time for waits for the next tick too.
        """
        failures = []
        now_s = time.monotonic()
        wanted: set[tuple[str, int, int]] = set()
        for name in names:
            dom = self._domains.get(name)
            if dom is None:
                continue
            key = (dom.UUIDString(), dom.ID(), period_s)
            wanted.add(key)
            retry = self._period_retry.get(key)
            if key in self._period_set:
                continue
            if retry is not None and retry.unanswered is not None:
                if retry.unanswered.succeeded():  # it got there in the end
                    self._period_set.add(key)
                    del self._period_retry[key]
                    continue
                if not retry.unanswered.done.is_set():
                    continue
            if retry is not None and now_s < retry.next_at_s:
                continue
            hung = False
            try:
                self._bounded(
                    "setMemoryStatsPeriod",
                    functools.partial(dom.setMemoryStatsPeriod, period_s, libvirt.VIR_DOMAIN_AFFECT_LIVE),
                    deadline_s,
                )
            except DeadlineSpent:
                break
            except libvirt.libvirtError as exc:
                if _gone(exc):
                    continue  # destroyed since this tick's sample: skipped, like any domain that went away
                error = exc.get_error_message()
            except (TimeoutError, HypervisorError) as exc:
                error, hung = str(exc), True
            else:
                self._period_set.add(key)
                self._period_retry.pop(key, None)
                continue
            backoff_s = PERIOD_RETRY_START_S if retry is None else min(retry.backoff_s * 2, PERIOD_RETRY_MAX_S)
            unanswered = self._abandoned[-1] if hung and self._abandoned else None
            self._period_retry[key] = _PeriodRetry(name, time.monotonic() + backoff_s, backoff_s, error, unanswered)
            if retry is None:
                failures.append(
                    f"{name}: cannot set the balloon stats period, retrying every {PERIOD_RETRY_START_S:.0f} s"
                    f" doubling to {PERIOD_RETRY_MAX_S:.0f} s: {error}"
                )
            if hung:
                break
        # Domains gone, restarted (a new id) or no longer managed: their retries end with them.
        for key in set(self._period_retry) - wanted:
            del self._period_retry[key]
        return failures

    def stats_period_failures(self) -> Mapping[str, str]:
        return {retry.name: retry.error for retry in self._period_retry.values()}

    def stats_periods_s(self, deadline_s: float | None = None) -> dict[str, int | None]:
        """Every running domain of the last sample (those without a balloon too), with the balloon stats period
        its live definition holds: 0 when none is set, None when libvirt did not say. Reads only: `memcoord
        plan` uses it to tell a guest without a period from one whose stats stopped."""
        periods: dict[str, int | None] = {}
        for name, dom in self._domains.items():
            try:
                xml = self._bounded("XMLDesc", functools.partial(dom.XMLDesc, 0), deadline_s)
            except (libvirt.libvirtError, TimeoutError, HypervisorError):
                periods[name] = None
                continue
            periods[name] = balloon_period_s(xml)
        return periods

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        results = []
        for change in changes:
            dom = self._domains.get(change.domain)
            if dom is None:
                results.append(ApplyResult(change, DOMAIN_GONE, sent=False))
                continue
            try:
                self._bounded(
                    "setMemory",
                    functools.partial(dom.setMemoryFlags, change.to_kib, libvirt.VIR_DOMAIN_AFFECT_LIVE),
                    deadline_s,
                )
            except DeadlineSpent:
                results.append(ApplyResult(change, SKIPPED_DEADLINE, sent=False))
            except TimeoutError as exc:
                # Sent and given up on: the call goes on in its thread and may still land.
                results.append(ApplyResult(change, str(exc), unknown=True))
            except libvirt.libvirtError as exc:
                if _gone(exc):  # destroyed since this tick's sample: it holds no memory of the host's now
                    results.append(ApplyResult(change, DOMAIN_GONE, sent=False))
                    continue
                # The connection lost: libvirtd may have read the request and may carry it out (a connection
                # lost before the call was sent cannot be told apart here, and counting it as set is the safe side).
                lost = connection_lost(dom.connect(), exc)  # the handle's own connection, no round trip
                results.append(ApplyResult(change, exc.get_error_message(), unknown=lost))
            except HypervisorError as exc:  # too many calls unanswered: this one was not sent
                results.append(ApplyResult(change, str(exc), sent=False))
            else:
                results.append(ApplyResult(change))
        return results

    def close(self) -> None:
        self._drop()
