"""A simulated hypervisor behind the same port as libvirt: for policy tests, `simulate` and benchmarks.

Guests have a maximum, a balloon target, a current size that converges toward the target at a finite rate,
guest stats that refresh on a period, and a workload (workloads.py) that asks for memory over time. A workload
asking for more than the guest has is OOM-killed (counted). Time only moves when `advance` is called, and any
randomness comes from a `random.Random(seed)`, so a run is deterministic for a seed.

Host memory follows what QEMU really holds: a guest's RSS grows with what it touches and only shrinks when the
balloon takes pages back (memory a program frees inside the guest stays with QEMU), plus QEMU's own overhead
(`overhead_kib`, a scenario's `host.qemu_overhead_mib`), which libvirt's RSS figure includes. That is why reclaiming
idle memory matters to the host at all, and the simulator has to model it for the comparison to mean anything.

Page cache, as a Linux guest has it: a guest that reads files (a `FileReader`) caches them in memory the programs
do not use, until MemFree is down to the kernel's watermark (`CACHE_FREE_FLOOR_KIB`). Cache is reclaimable: the
programs' demand and an inflating balloon evict it first, so a program is OOM-killed only when it wants more than
the guest's whole size. The guest reports `unused` (MemFree) = current - used - cache and `usable` (MemAvailable)
= current - used: the kernel's own reserve inside MemAvailable is a few MiB and is left out to keep the two
figures easy to check. Cached pages are touched pages, so QEMU backs them (they count in RSS, i.e. in host memory).
A reader may say its MemAvailable counts only part of its cache (`FileReader.available_pct`): a real guest
streaming its disk was seen reporting less MemAvailable as its cache filled, and read as ramping.

A lying guest (`SimGuest.claimed_unused_kib`, `claimed_usable_kib`) reports fixed figures whatever it holds; the
run still judges it by the truth.

The host's own use can change over time (`HostPressure`: a host process taking memory, ramped, then freed), on
top of a fixed `host_other_used_kib`.

A guest may boot during the run (`SimGuest.boot_s`): until then it is not running (not sampled, holds no host
memory); it starts at its first `advance` past that time, unless the caller holds its start (`hold_start`: the run
does, while a libvirt hook asks memcoord for room). Booted, it holds its kernel's memory and what its workload
touches, as any guest.

Host memory pressure (PSI): with `thrash_below_kib`, the host's own processes stall on memory while its available
memory is below that line (their page cache is squeezed out and read again), in proportion to how far below: the
share of time stalled, averaged over 10 s as the kernel's `some avg10` is (an exponential average), is what the
host reports (`HostStats.pressure_some_avg10`). Without it the host reports no PSI (None).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from memcoord.core.model import (
    NO_SETTINGS,
    ApplyResult,
    Change,
    DomainSettings,
    DomainStats,
    HostStats,
    Snapshot,
    mib_to_kib,
)
from memcoord.core.port import DOMAIN_GONE, HypervisorError
from memcoord.sim.workloads import FileReader, Hog, HostPressure, Idle, Workload

KERNEL_USED_KIB = mib_to_kib(60)
# Page cache stops growing when MemFree reaches the kernel's high watermark (kswapd's goal); on 1-8 GiB guests
# min_free_kbytes and the watermarks above it come to 10-30 MiB.
CACHE_FREE_FLOOR_KIB = mib_to_kib(16)


@dataclass
class SimGuest:
    """One guest: current converges to target; used is what the kernel and workload hold; cache is the page cache
    (reclaimable); rss is what QEMU holds."""

    name: str
    max_kib: int
    target_kib: int
    workload: Workload = field(default_factory=Idle)
    reader: FileReader | None = None
    has_balloon_stats: bool = True
    # What the guest's libvirt definition would say (metadata, min_guarantee): it travels with the guest.
    settings: DomainSettings | None = NO_SETTINGS  # None: not read yet (memcoord plan seeds unread guests)
    current_kib: int = 0
    used_kib: int = KERNEL_USED_KIB
    cache_kib: int = 0
    rss_kib: int = 0
    oom_kills: int = 0
    last_update_s: int = 0
    reported_unused_kib: int = 0
    reported_usable_kib: int = 0
    reported_current_kib: int = 0
    # What the QEMU process holds beyond the guest's pages (its own code, device state, TCG or KVM structures):
    # host memory the guest never gives back. libvirt's RSS figure includes it.
    overhead_kib: int = 0
    # When it boots (simulated seconds); None: running from the start.
    boot_s: float | None = None
    # A lying (hostile or broken) guest reports these as unused and usable whatever it holds; None: the truth.
    claimed_unused_kib: int | None = None
    claimed_usable_kib: int | None = None
    # False: a balloon that does not inflate when asked (a stuck balloon driver; a guest that cannot give pages).
    inflates: bool = True

    @property
    def unused_kib(self) -> int:
        """MemFree: neither the programs nor the page cache hold it."""
        return self.current_kib - self.used_kib - self.cache_kib

    @property
    def usable_kib(self) -> int:
        """MemAvailable: what programs could still get, the page cache included (it is dropped for them)."""
        return self.current_kib - self.used_kib

    def __post_init__(self) -> None:
        self.current_kib = self.current_kib or self.target_kib
        self.rss_kib = self.rss_kib or self.used_kib


class SimulatedHypervisor:
    def __init__(
        self,
        guests: Iterable[SimGuest],
        host_total_kib: int,
        balloon_rate_kib_per_s: int = mib_to_kib(500),
        start_s: float = 1_000_000.0,
        realtime: bool = False,
        host_other_used_kib: int = 0,
        host_pressure: Sequence[HostPressure] = (),
        thrash_below_kib: int | None = None,
    ) -> None:
        all_guests = list(guests)
        self.guests = {g.name: g for g in all_guests if g.boot_s is None or g.boot_s <= start_s}
        # Guests that boot later, and those whose boot is held (a hook asking for room first).
        self.not_booted = {g.name: g for g in all_guests if g.name not in self.guests}
        self.held_starts: set[str] = set()
        self.thrash_below_kib = thrash_below_kib
        self.pressure_avg10 = 0.0
        self.host_total_kib = host_total_kib
        self.host_other_used_kib = host_other_used_kib
        self.host_pressure = tuple(host_pressure)
        self.balloon_rate_kib_per_s = balloon_rate_kib_per_s
        self.now_s = start_s
        self.stats_period_s: dict[str, int] = {}
        self.set_memory_calls = 0
        self.sample_calls = 0
        self.reachable = True
        # In real time (memcoord run on a sim: URI) each sample first advances the model by the wall time passed.
        self._realtime_mark_s = time.monotonic() if realtime else None

    def host_used_kib(self) -> int:
        """What the host itself and its other processes hold now (not QEMU)."""
        return self.host_other_used_kib + sum(p.used_at_kib(self.now_s) for p in self.host_pressure)

    def host_held_kib(self) -> int:
        """What the QEMU processes (guest pages and their own overhead) and the rest of the host hold."""
        return self.host_used_kib() + sum(g.rss_kib + g.overhead_kib for g in self.guests.values())

    def host_available_kib(self) -> int:
        """Host memory not held by QEMU processes or the rest of the host."""
        return max(0, self.host_total_kib - self.host_held_kib())

    def _host(self) -> HostStats:
        pressure = None if self.thrash_below_kib is None else round(self.pressure_avg10, 2)
        return HostStats(
            available_kib=self.host_available_kib(), total_kib=self.host_total_kib, pressure_some_avg10=pressure
        )

    def due_to_boot(self, until_s: float) -> list[SimGuest]:
        """Guests not booted yet whose boot time comes by until_s."""
        return [g for g in self.not_booted.values() if g.boot_s is not None and g.boot_s <= until_s]

    def hold_start(self, name: str, held: bool) -> None:
        """Hold a guest's boot (it stays down past its boot time) or let it boot at the next advance."""
        if held:
            self.held_starts.add(name)
        else:
            self.held_starts.discard(name)

    def _boot_due(self) -> None:
        for g in self.due_to_boot(self.now_s):
            if g.name not in self.held_starts:
                del self.not_booted[g.name]
                self.guests[g.name] = g

    def _stall_share(self) -> float:
        """Percent of the time the host's processes stall on memory now (see the module docstring)."""
        if not self.thrash_below_kib:
            return 0.0
        below_kib = self.thrash_below_kib - self.host_available_kib()
        return 100.0 * min(1.0, max(0.0, below_kib / self.thrash_below_kib))

    def advance(self, dt_s: float) -> None:
        """Move time forward: balloons converge, workloads grow (or die), caches fill or are evicted, guests
        refresh their stats."""
        self.now_s += dt_s
        self._boot_due()
        step_kib = int(self.balloon_rate_kib_per_s * dt_s)
        now_s = self.now_s
        for g in self.guests.values():
            gap_kib = g.target_kib - g.current_kib
            if gap_kib > 0 or (gap_kib < 0 and g.inflates):
                g.current_kib += max(-step_kib, min(step_kib, gap_kib))
            want_kib = KERNEL_USED_KIB + g.workload.demand_kib(now_s)
            if want_kib > g.current_kib:  # even with the whole page cache dropped it does not fit
                g.oom_kills += 1
                g.workload.killed(now_s)
                want_kib = KERNEL_USED_KIB + g.workload.demand_kib(now_s)
            g.used_kib = min(want_kib, g.current_kib)
            # Programs and the inflating balloon take page cache before anything else, and the kernel keeps
            # MemFree at its watermark by dropping cache.
            room_kib = max(0, g.current_kib - g.used_kib - CACHE_FREE_FLOOR_KIB)
            g.cache_kib = min(g.cache_kib, room_kib)
            reader = g.reader
            if reader is not None and reader.reading(now_s):
                cap_kib = max(g.cache_kib, min(reader.file_kib, room_kib))
                g.cache_kib = min(cap_kib, g.cache_kib + int(reader.read_kib_per_s * dt_s))
            # QEMU keeps pages the guest touched (programs' and cached); only the balloon gives them back.
            g.rss_kib = min(max(g.rss_kib, g.used_kib + g.cache_kib), g.current_kib)
            period_s = self.stats_period_s.get(g.name, 0)
            if g.has_balloon_stats and period_s and now_s - g.last_update_s >= period_s:
                g.last_update_s = int(now_s)
                g.reported_unused_kib = g.unused_kib if g.claimed_unused_kib is None else g.claimed_unused_kib
                if g.claimed_usable_kib is not None:
                    g.reported_usable_kib = g.claimed_usable_kib
                else:
                    uncounted_kib = 0 if reader is None else int(g.cache_kib * (100 - reader.available_pct) / 100)
                    g.reported_usable_kib = g.usable_kib - uncounted_kib
                g.reported_current_kib = g.current_kib
        if self.thrash_below_kib is not None:
            self.pressure_avg10 += (self._stall_share() - self.pressure_avg10) * (1 - math.exp(-dt_s / 10.0))

    def sample(self, deadline_s: float | None = None, only: frozenset[str] | None = None) -> Snapshot:
        if not self.reachable:
            raise HypervisorError("simulated hypervisor unreachable")
        self.sample_calls += 1
        if self._realtime_mark_s is not None:
            mark_s = time.monotonic()
            self.advance(mark_s - self._realtime_mark_s)
            self._realtime_mark_s = mark_s
        domains = tuple(
            DomainStats(
                name=g.name,
                current_kib=g.current_kib,
                max_kib=g.max_kib,
                unused_kib=g.reported_unused_kib if g.last_update_s else None,
                usable_kib=g.reported_usable_kib if g.last_update_s else None,
                # The guest's own total (MemTotal) in the same report: a Linux guest's shrinks with the balloon.
                available_kib=g.reported_current_kib if g.last_update_s else None,
                rss_kib=g.rss_kib + g.overhead_kib,
                last_update_s=g.last_update_s or None,
                settings=g.settings,
            )
            for g in self.guests.values()
            if only is None or g.name in only
        )
        return Snapshot(host=self._host(), domains=domains, taken_at_s=self.now_s)

    def ensure_stats_period(self, names: Iterable[str], period_s: int, deadline_s: float | None = None) -> list[str]:
        for name in names:
            if name in self.guests:
                self.stats_period_s[name] = period_s
        return []

    def stats_period_failures(self) -> Mapping[str, str]:
        return {}

    def domain_names(self, deadline_s: float | None = None) -> set[str]:
        if not self.reachable:
            raise HypervisorError("simulated hypervisor unreachable")
        return set(self.guests)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        results = []
        for change in changes:
            guest = self.guests.get(change.domain)
            if guest is None:
                results.append(ApplyResult(change, DOMAIN_GONE, sent=False))
            elif not 0 < change.to_kib <= guest.max_kib:
                results.append(ApplyResult(change, f"target {change.to_kib} KiB outside 1..{guest.max_kib}"))
            else:
                guest.target_kib = change.to_kib
                self.set_memory_calls += 1
                results.append(ApplyResult(change))
        return results

    def close(self) -> None:
        pass


def demo_host(realtime: bool = False) -> SimulatedHypervisor:
    """A small host to try memcoord on without libvirt: one guest with a growing hog, one idle, one busy."""
    return SimulatedHypervisor(
        [
            SimGuest(
                "sim-hog",
                max_kib=mib_to_kib(2048),
                target_kib=mib_to_kib(512),
                workload=Hog(rate_kib_per_s=mib_to_kib(20), start_s=1_000_005.0),
            ),
            SimGuest("sim-idle", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024)),
            SimGuest(
                "sim-busy",
                max_kib=mib_to_kib(2048),
                target_kib=mib_to_kib(512),
                workload=Hog(rate_kib_per_s=mib_to_kib(5), limit_kib=mib_to_kib(200)),
            ),
        ],
        host_total_kib=mib_to_kib(8192),
        realtime=realtime,
    )
