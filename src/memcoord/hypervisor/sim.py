"""A simulated hypervisor behind the same port as libvirt: for policy tests, `simulate` and benchmarks.

Guests have a maximum, a balloon target, an actual size that converges toward the target at a finite rate,
guest stats that refresh on a period, and a workload that asks for memory over time. A workload asking for
more than the guest has is OOM-killed (counted) and starts over. Time only moves when `advance` is called,
so a run is deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..model import ApplyResult, Change, DomainStats, HostStats, Snapshot, mib_to_kib
from . import HypervisorError

KERNEL_USED_KIB = mib_to_kib(60)


class Workload(Protocol):
    def demand_kib(self, t_s: float) -> int:
        """Memory the guest's programs want at time t_s (on top of the kernel's)."""
        ...

    def killed(self, t_s: float) -> None:
        """The OOM killer hit the workload at t_s."""
        ...


@dataclass
class Idle:
    used_kib: int = 0

    def demand_kib(self, t_s: float) -> int:
        return self.used_kib

    def killed(self, t_s: float) -> None:
        self.used_kib = 0


@dataclass
class Hog:
    """Grows at rate_kib_s from start_s up to limit_kib (None: until killed), holds, then frees at free_s."""

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
        # Like the course's hog: once killed it stays dead.
        self.free_s = t_s


@dataclass
class SimGuest:
    name: str
    max_kib: int
    target_kib: int
    workload: Workload = field(default_factory=Idle)
    has_balloon_stats: bool = True
    actual_kib: int = 0
    used_kib: int = KERNEL_USED_KIB
    oom_kills: int = 0
    last_update_s: int = 0
    reported_unused_kib: int = 0

    def __post_init__(self) -> None:
        self.actual_kib = self.actual_kib or self.target_kib


class SimulatedHypervisor:
    def __init__(
        self,
        guests: Iterable[SimGuest],
        host_total_kib: int,
        balloon_rate_kib_s: int = mib_to_kib(500),
        start_s: float = 1_000_000.0,
        realtime: bool = False,
    ) -> None:
        self.guests = {g.name: g for g in guests}
        self.host_total_kib = host_total_kib
        self.balloon_rate_kib_s = balloon_rate_kib_s
        self.now_s = start_s
        self.stats_period_s: dict[str, int] = {}
        self.set_memory_calls = 0
        self.reachable = True
        # In real time (memcoord run on a sim: URI) each sample first advances the model by the wall time passed.
        self._realtime_mark_s = time.monotonic() if realtime else None

    def _host(self) -> HostStats:
        used_kib = sum(g.used_kib for g in self.guests.values())
        return HostStats(available_kib=max(0, self.host_total_kib - used_kib), total_kib=self.host_total_kib)

    def advance(self, dt_s: float) -> None:
        """Move time forward: balloons converge, workloads grow, guests refresh their stats."""
        self.now_s += dt_s
        step_kib = int(self.balloon_rate_kib_s * dt_s)
        for g in self.guests.values():
            gap_kib = g.target_kib - g.actual_kib
            g.actual_kib += max(-step_kib, min(step_kib, gap_kib))
            want_kib = KERNEL_USED_KIB + g.workload.demand_kib(self.now_s)
            if want_kib > g.actual_kib:
                g.oom_kills += 1
                g.workload.killed(self.now_s)
                want_kib = KERNEL_USED_KIB + g.workload.demand_kib(self.now_s)
            g.used_kib = min(want_kib, g.actual_kib)
            period_s = self.stats_period_s.get(g.name, 0)
            if g.has_balloon_stats and period_s and self.now_s - g.last_update_s >= period_s:
                g.last_update_s = int(self.now_s)
                g.reported_unused_kib = g.actual_kib - g.used_kib

    def sample(self) -> Snapshot:
        if not self.reachable:
            raise HypervisorError("simulated hypervisor unreachable")
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
                usable_kib=g.reported_unused_kib if g.last_update_s else None,
                rss_kib=g.used_kib,
                last_update_s=g.last_update_s or None,
            )
            for g in self.guests.values()
        )
        return Snapshot(host=self._host(), domains=domains, taken_at_s=self.now_s)

    def ensure_stats_period(self, names: Iterable[str], period_s: int) -> list[str]:
        for name in names:
            if name in self.guests:
                self.stats_period_s[name] = period_s
        return []

    def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
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
