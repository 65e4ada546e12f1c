"""A simulated hypervisor behind the same port as libvirt: for policy tests, `simulate` and benchmarks.

Guests have a maximum, a balloon target, an actual size that converges toward the target at a finite rate,
guest stats that refresh on a period, and a workload that asks for memory over time. A workload asking for
more than the guest has is OOM-killed (counted). Time only moves when `advance` is called, and any randomness
comes from a `random.Random(seed)`, so a run is deterministic for a seed.

Host memory follows what QEMU really holds: a guest's RSS grows with what it touches and only shrinks when the
balloon takes pages back (memory a program frees inside the guest stays with QEMU). That is why reclaiming
idle memory matters to the host at all, and the simulator has to model it for the comparison to mean anything.

Page cache, as a Linux guest has it: a guest that reads files (a `FileReader`) caches them in memory the programs
do not use, until MemFree is down to the kernel's watermark (`CACHE_FREE_FLOOR_KIB`). Cache is reclaimable: the
programs' demand and an inflating balloon evict it first, so a program is OOM-killed only when it wants more than
the guest's whole size. The guest reports `unused` (MemFree) = actual - used - cache and `usable` (MemAvailable)
= actual - used: the kernel's own reserve inside MemAvailable is a few MiB and is left out to keep the two figures
easy to check. Cached pages are touched pages, so QEMU backs them (they count in RSS, i.e. in host memory).

The host's own use can change over time (`HostPressure`: a host process taking memory, ramped, then freed), on
top of a fixed `host_other_used_kib`.
"""

from __future__ import annotations

import csv
import random
import time
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..model import NO_SETTINGS, ApplyResult, Change, DomainSettings, DomainStats, HostStats, Snapshot, mib_to_kib
from . import HypervisorError

KERNEL_USED_KIB = mib_to_kib(60)
# Page cache stops growing when MemFree reaches the kernel's high watermark (kswapd's goal); on 1-8 GiB guests
# min_free_kbytes and the watermarks above it come to 10-30 MiB.
CACHE_FREE_FLOOR_KIB = mib_to_kib(16)


class Workload(Protocol):
    def demand_kib(self, t_s: float) -> int:
        """Memory the guest's programs want at time t_s (on top of the kernel's)."""
        ...

    def killed(self, t_s: float) -> None:
        """The OOM killer hit the workload at t_s."""
        ...


@dataclass
class Idle:
    """A guest doing nothing but holding used_kib (a daemon or two)."""

    used_kib: int = 0

    def demand_kib(self, t_s: float) -> int:
        return self.used_kib

    def killed(self, t_s: float) -> None:
        self.used_kib = 0


@dataclass
class Hog:
    """Grows at rate_kib_s from start_s up to limit_kib (None: until killed), holds, then frees at free_s.

    Covers steady growth (no limit), grow-then-hold (limit) and grow-then-hold-then-free (limit and free_s).
    Like the course's hog, once killed it stays dead.
    """

    rate_kib_s: int
    start_s: float = 0.0
    limit_kib: int | None = None
    free_s: float | None = None
    _restart_s: float = 0.0

    def demand_kib(self, t_s: float) -> int:
        if t_s < self.start_s or (self.free_s is not None and t_s >= self.free_s):
            return 0
        grown_kib = int((t_s - max(self.start_s, self._restart_s)) * self.rate_kib_s)
        return grown_kib if self.limit_kib is None else min(grown_kib, self.limit_kib)

    def killed(self, t_s: float) -> None:
        self.free_s = t_s


@dataclass
class Burst:
    """base_kib always, plus peak_kib for length_s about every every_s seconds (jittered by a seeded RNG).

    A burst rises to its peak over ramp_s (0: a step), as a batch job or a cache warm-up does: the hardest
    shape for a policy that grows one step per tick. With ramp_max_s each burst draws its ramp between ramp_s
    and ramp_max_s. A killed burst ends; the next one comes on schedule.
    """

    base_kib: int
    peak_kib: int
    every_s: float
    length_s: float
    start_s: float = 0.0
    jitter: float = 0.0
    seed: int = 0
    ramp_s: float = 0.0
    ramp_max_s: float | None = None
    _starts_s: list[float] = field(default_factory=list)
    _ramps_s: list[float] = field(default_factory=list)
    _dead_until_s: float = -1.0

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self._rng = rng
        self._starts_s = [self.start_s]
        self._ramps_s = [self._draw_ramp_s()]

    def _draw_ramp_s(self) -> float:
        # Draw only when asked to, so that scenarios without ramp_max_s keep their burst times.
        if self.ramp_max_s is None:
            return self.ramp_s
        return self._rng.uniform(self.ramp_s, self.ramp_max_s)

    def _burst_index(self, t_s: float) -> int | None:
        """Which burst covers t_s, or None between bursts. Burst times are drawn lazily, in order."""
        while self._starts_s[-1] <= t_s:
            gap_s = self.every_s * (1 + self.jitter * (2 * self._rng.random() - 1))
            self._starts_s.append(self._starts_s[-1] + max(gap_s, self.length_s))
            self._ramps_s.append(self._draw_ramp_s())
        i = bisect_right(self._starts_s, t_s) - 1
        if i < 0 or t_s >= self._starts_s[i] + self.length_s:
            return None
        return i

    def demand_kib(self, t_s: float) -> int:
        i = self._burst_index(t_s)
        if i is None or t_s < self._dead_until_s:
            return self.base_kib
        start_s, ramp_s = self._starts_s[i], self._ramps_s[i]
        if ramp_s > 0 and t_s - start_s < ramp_s:
            return self.base_kib + int(self.peak_kib * (t_s - start_s) / ramp_s)
        return self.base_kib + self.peak_kib

    def killed(self, t_s: float) -> None:
        i = self._burst_index(t_s)
        self._dead_until_s = (self._starts_s[i] + self.length_s) if i is not None else t_s


@dataclass
class Sawtooth:
    """Ramps from low_kib to high_kib over period_s, drops back to low_kib, and again (a leaky cache flushed)."""

    low_kib: int
    high_kib: int
    period_s: float
    start_s: float = 0.0
    _dead_cycle: int = -1

    def demand_kib(self, t_s: float) -> int:
        if t_s < self.start_s:
            return self.low_kib
        cycle, into_s = divmod(t_s - self.start_s, self.period_s)
        if int(cycle) == self._dead_cycle:
            return self.low_kib
        return self.low_kib + int((self.high_kib - self.low_kib) * into_s / self.period_s)

    def killed(self, t_s: float) -> None:
        self._dead_cycle = int((t_s - self.start_s) // self.period_s) if t_s >= self.start_s else -1


@dataclass
class Trace:
    """Demand replayed from (t_s, demand_kib) points, stepwise (each value holds until the next point).

    Time is relative to start_s. A kill drops demand to zero for restart_after_s, then the trace resumes, as a
    service restarted by systemd would.
    """

    points: list[tuple[float, int]]
    start_s: float = 0.0
    restart_after_s: float = 5.0
    _dead_until_s: float = -1.0

    def __post_init__(self) -> None:
        self.points = sorted(self.points)
        self._times_s = [t for t, _ in self.points]

    def demand_kib(self, t_s: float) -> int:
        if t_s < self._dead_until_s:
            return 0
        i = bisect_right(self._times_s, t_s - self.start_s) - 1
        return self.points[i][1] if i >= 0 else 0

    def killed(self, t_s: float) -> None:
        self._dead_until_s = t_s + self.restart_after_s


class TraceError(ValueError):
    """A trace file cannot be read; the message names the file and line."""


def load_trace(path: Path | str) -> list[tuple[float, int]]:
    """Read a CSV of `t_s,demand_mib` rows (a header line is allowed) into (t_s, demand_kib) points."""
    path = Path(path)
    points: list[tuple[float, int]] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or row[0].strip().startswith("#"):
                    continue
                if len(row) != 2:
                    raise TraceError(f"{path}:{lineno}: expected 2 columns t_s,demand_mib, got {len(row)}")
                try:
                    t_s, demand_mib = float(row[0]), float(row[1])
                except ValueError:
                    if lineno == 1:
                        continue  # header
                    raise TraceError(f"{path}:{lineno}: not numbers: {','.join(row)!r}") from None
                if demand_mib < 0:
                    raise TraceError(f"{path}:{lineno}: demand_mib must be >= 0, got {demand_mib}")
                points.append((t_s, mib_to_kib(demand_mib)))
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    if not points:
        raise TraceError(f"{path}: no data rows")
    return points


@dataclass
class FileReader:
    """A program reading a set of file_kib bytes of files at read_kib_per_s from start_s, over and over.

    What it reads goes into the page cache, up to the whole file set; evicted pages are read (cached) again at
    the same rate. Reading stops at stop_s (None: never); what is cached stays until something evicts it.
    """

    read_kib_per_s: int
    file_kib: int
    start_s: float = 0.0
    stop_s: float | None = None

    def reading(self, t_s: float) -> bool:
        return t_s >= self.start_s and (self.stop_s is None or t_s < self.stop_s)


@dataclass
class HostPressure:
    """A host process that takes used_kib, ramped linearly over ramp_s from start_s, and frees it all at end_s."""

    used_kib: int
    start_s: float
    ramp_s: float = 0.0
    end_s: float | None = None

    def used_at_kib(self, t_s: float) -> int:
        if t_s < self.start_s or (self.end_s is not None and t_s >= self.end_s):
            return 0
        if self.ramp_s > 0 and t_s - self.start_s < self.ramp_s:
            return int(self.used_kib * (t_s - self.start_s) / self.ramp_s)
        return self.used_kib


@dataclass
class SimGuest:
    """One guest: actual converges to target; used is what the kernel and workload hold; cache is the page cache
    (reclaimable); rss is what QEMU holds."""

    name: str
    max_kib: int
    target_kib: int
    workload: Workload = field(default_factory=Idle)
    reader: FileReader | None = None
    has_balloon_stats: bool = True
    # What the guest's libvirt definition would say (metadata, min_guarantee): it travels with the guest.
    settings: DomainSettings = NO_SETTINGS
    actual_kib: int = 0
    used_kib: int = KERNEL_USED_KIB
    cache_kib: int = 0
    rss_kib: int = 0
    oom_kills: int = 0
    last_update_s: int = 0
    reported_unused_kib: int = 0
    reported_usable_kib: int = 0
    reported_current_kib: int = 0

    @property
    def unused_kib(self) -> int:
        """MemFree: neither the programs nor the page cache hold it."""
        return self.actual_kib - self.used_kib - self.cache_kib

    @property
    def usable_kib(self) -> int:
        """MemAvailable: what programs could still get, the page cache included (it is dropped for them)."""
        return self.actual_kib - self.used_kib

    def __post_init__(self) -> None:
        self.actual_kib = self.actual_kib or self.target_kib
        self.rss_kib = self.rss_kib or self.used_kib


class SimulatedHypervisor:
    def __init__(
        self,
        guests: Iterable[SimGuest],
        host_total_kib: int,
        balloon_rate_kib_s: int = mib_to_kib(500),
        start_s: float = 1_000_000.0,
        realtime: bool = False,
        host_other_used_kib: int = 0,
        host_pressure: Sequence[HostPressure] = (),
    ) -> None:
        self.guests = {g.name: g for g in guests}
        self.host_total_kib = host_total_kib
        self.host_other_used_kib = host_other_used_kib
        self.host_pressure = tuple(host_pressure)
        self.balloon_rate_kib_s = balloon_rate_kib_s
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

    def host_available_kib(self) -> int:
        """Host memory not held by QEMU processes or the rest of the host."""
        held_kib = self.host_used_kib() + sum(g.rss_kib for g in self.guests.values())
        return max(0, self.host_total_kib - held_kib)

    def _host(self) -> HostStats:
        return HostStats(available_kib=self.host_available_kib(), total_kib=self.host_total_kib)

    def advance(self, dt_s: float) -> None:
        """Move time forward: balloons converge, workloads grow (or die), caches fill or are evicted, guests
        refresh their stats."""
        self.now_s += dt_s
        step_kib = int(self.balloon_rate_kib_s * dt_s)
        now_s = self.now_s
        for g in self.guests.values():
            gap_kib = g.target_kib - g.actual_kib
            if gap_kib:
                g.actual_kib += max(-step_kib, min(step_kib, gap_kib))
            want_kib = KERNEL_USED_KIB + g.workload.demand_kib(now_s)
            if want_kib > g.actual_kib:  # even with the whole page cache dropped it does not fit
                g.oom_kills += 1
                g.workload.killed(now_s)
                want_kib = KERNEL_USED_KIB + g.workload.demand_kib(now_s)
            g.used_kib = min(want_kib, g.actual_kib)
            # Programs and the inflating balloon take page cache before anything else, and the kernel keeps
            # MemFree at its watermark by dropping cache.
            room_kib = max(0, g.actual_kib - g.used_kib - CACHE_FREE_FLOOR_KIB)
            g.cache_kib = min(g.cache_kib, room_kib)
            reader = g.reader
            if reader is not None and reader.reading(now_s):
                cap_kib = max(g.cache_kib, min(reader.file_kib, room_kib))
                g.cache_kib = min(cap_kib, g.cache_kib + int(reader.read_kib_per_s * dt_s))
            # QEMU keeps pages the guest touched (programs' and cached); only the balloon gives them back.
            g.rss_kib = min(max(g.rss_kib, g.used_kib + g.cache_kib), g.actual_kib)
            period_s = self.stats_period_s.get(g.name, 0)
            if g.has_balloon_stats and period_s and now_s - g.last_update_s >= period_s:
                g.last_update_s = int(now_s)
                g.reported_unused_kib = g.unused_kib
                g.reported_usable_kib = g.usable_kib
                g.reported_current_kib = g.actual_kib

    def sample(self, deadline_s: float | None = None) -> Snapshot:
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
                current_kib=g.actual_kib,
                max_kib=g.max_kib,
                unused_kib=g.reported_unused_kib if g.last_update_s else None,
                usable_kib=g.reported_usable_kib if g.last_update_s else None,
                # The guest's own total (MemTotal) in the same report: a Linux guest's shrinks with the balloon.
                available_kib=g.reported_current_kib if g.last_update_s else None,
                rss_kib=g.rss_kib,
                last_update_s=g.last_update_s or None,
                settings=g.settings,
            )
            for g in self.guests.values()
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
                results.append(ApplyResult(change, "domain is gone"))
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
                workload=Hog(rate_kib_s=mib_to_kib(20), start_s=1_000_005.0),
            ),
            SimGuest("sim-idle", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024)),
            SimGuest(
                "sim-busy",
                max_kib=mib_to_kib(2048),
                target_kib=mib_to_kib(512),
                workload=Hog(rate_kib_s=mib_to_kib(5), limit_kib=mib_to_kib(200)),
            ),
        ],
        host_total_kib=mib_to_kib(8192),
        realtime=realtime,
    )
