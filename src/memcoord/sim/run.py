"""Running a scenario through the daemon's own loop (`step.step`) on the simulated hypervisor, and measuring it.

The simulation advances in steps of `step_s` (default 0.1 s) and the loop runs every `loop.interval_s`, as
the service would; metrics are measured on the true guest state at every step, not on the stale stats the
policy sees.

A guest's memory is used (kernel + programs), page cache (reclaimable) or free. What a guest holds that its
programs do not use, free + cache (MemAvailable, "usable"), is what the metrics call idle memory, and a guest
starves when that falls to `guest.starving_mib`: a guest full of page cache is not hungry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memcoord.core.config import Config
from memcoord.core.model import KIB_PER_MIB, Snapshot, mib_to_kib
from memcoord.core.room import Reservation, live, reserved_kib
from memcoord.core.step import MEMCOORD, LoopPolicy, step
from memcoord.sim.host import KERNEL_USED_KIB
from memcoord.sim.scenario import SIM_EPOCH_S, Scenario, build_host

# The host counts as under memory pressure while its PSI some avg10 is above this (RunReport.host_pressure_s): the
# line `bench/compare.py`'s memcoord-psi run relieves at.
PRESSURE_LINE_PCT = 10.0


class _Hook:
    """memcoord's libvirt hook on the simulated host: a guest about to boot asks for its room (start size + QEMU's
    overhead) and boots once the tick's budget covers it, or when the hook gives up (fails open)."""

    def __init__(self, hv: Any, config: Config, timeout_s: float) -> None:
        self.hv = hv
        self.overhead_kib = mib_to_kib(config.host.guest_overhead_mib)
        self.hold_s = config.room.hold_s
        self.timeout_s = timeout_s
        self.reservations: list[Reservation] = []
        self.asked_at_s: dict[str, float] = {}
        self.waits_s: dict[str, float] = {}

    def step(self, until_s: float) -> None:
        """Guests booting by until_s ask now (their boot is held meanwhile); a hook whose time is up gives up
        and lets its guest boot (it fails open)."""
        for g in self.hv.due_to_boot(until_s):
            if g.name not in self.asked_at_s:
                self.asked_at_s[g.name] = self.hv.now_s
                want_kib = g.target_kib + self.overhead_kib
                self.reservations.append(Reservation(want_kib, g.name, self.hv.now_s + self.hold_s))
                self.hv.hold_start(g.name, True)
        for name in list(self.hv.held_starts):
            if self.hv.now_s - self.asked_at_s[name] >= self.timeout_s:
                self._release(name)

    def reserved_kib(self, snapshot: Snapshot) -> int:
        self.reservations = live(self.reservations, snapshot, snapshot.taken_at_s)
        return reserved_kib(self.reservations, snapshot)

    def answer(self, budget_kib: int) -> None:
        """After a tick: the waiting guests boot once the budget covers their room."""
        if budget_kib >= 0:
            for name in list(self.hv.held_starts):
                self._release(name)

    def _release(self, name: str) -> None:
        self.waits_s[name] = self.hv.now_s - self.asked_at_s[name]
        self.hv.hold_start(name, False)


@dataclass(frozen=True)
class DemandCheck:
    """Could a perfect policy have avoided every OOM kill? Programs' demand only: page cache is reclaimable.

    fits: at every step, every guest's kernel + program demand fits its maximum, and all of them together plus
    their QEMUs' overhead and the host's own use fit the host with min_available_mib to spare.
    """

    peak_need_mib: float
    room_mib: float
    over_max: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.over_max and self.peak_need_mib <= self.room_mib


def check_demand(scenario: Scenario, min_available_mib: float, duration_s: float | None = None) -> DemandCheck:
    """Replay the scenario's demand on a fresh host, without a policy and without kills."""
    duration_s = scenario.duration_s if duration_s is None else duration_s
    hv = build_host(scenario)
    guests = [*hv.guests.values(), *hv.not_booted.values()]
    peak_need_kib = 0
    over_max: set[str] = set()
    for i in range(max(1, round(duration_s / scenario.step_s)) + 1):
        hv.now_s = SIM_EPOCH_S + i * scenario.step_s
        up = [g for g in guests if g.boot_s is None or g.boot_s <= hv.now_s]
        need_kib = hv.host_used_kib() + sum(g.overhead_kib for g in up)
        for g in up:
            want_kib = KERNEL_USED_KIB + g.workload.demand_kib(hv.now_s)
            if want_kib > g.max_kib:
                over_max.add(g.name)
            need_kib += want_kib
        peak_need_kib = max(peak_need_kib, need_kib)
    return DemandCheck(
        peak_need_mib=peak_need_kib / KIB_PER_MIB,
        room_mib=scenario.host.total_mib - min_available_mib,
        over_max=tuple(sorted(over_max)),
    )


@dataclass
class GuestReport:
    """What happened to one guest; sizes in MiB, times in seconds."""

    name: str
    max_mib: float
    peak_used_mib: float = 0.0
    peak_size_mib: float = 0.0
    final_size_mib: float = 0.0
    oom_kills: int = 0
    starving_s: float = 0.0
    # Integrals over the run in MiB x seconds (divided by the duration: the mean MiB), not rates.
    idle_mib_seconds: float = 0.0
    cache_mib_seconds: float = 0.0
    balloon_changes: int = 0
    relief_s: list[float] = field(default_factory=list)
    unrelieved: int = 0
    _starving_since_s: float | None = None

    def mean_idle_mib(self, duration_s: float) -> float:
        """Memory the guest held that its programs did not use (free + page cache), averaged over the run."""
        return self.idle_mib_seconds / duration_s if duration_s else 0.0

    def mean_cache_mib(self, duration_s: float) -> float:
        return self.cache_mib_seconds / duration_s if duration_s else 0.0


@dataclass
class Timeline:
    """Per tick, for --plot: time, and per guest current size, used and cache (MiB); host available (MiB)."""

    t_s: list[float] = field(default_factory=list)
    current_mib: dict[str, list[float]] = field(default_factory=dict)
    used_mib: dict[str, list[float]] = field(default_factory=dict)
    cache_mib: dict[str, list[float]] = field(default_factory=dict)
    host_available_mib: list[float] = field(default_factory=list)


@dataclass
class RunReport:
    scenario: str
    policy: str
    duration_s: float
    starving_mib: int
    host_total_mib: float
    host_min_available_mib: float
    host_min_at_s: float
    guests: list[GuestReport]
    timeline: Timeline | None = None
    host_guard_mib: float = 0.0
    # Seconds the host's available memory was below host.min_available_mib: in all, and the longest spell.
    host_below_guard_s: float = 0.0
    host_longest_below_guard_s: float = 0.0
    # Seconds the host's PSI (some avg10) was above PRESSURE_LINE_PCT; None where the scenario models no PSI.
    host_pressure_s: float | None = None
    # Guests booted during the run: how long each waited for its room (make-room), in boot order.
    boot_waits_s: dict[str, float] = field(default_factory=dict)

    @property
    def oom_kills(self) -> int:
        return sum(g.oom_kills for g in self.guests)

    @property
    def starving_guest_s(self) -> float:
        return sum(g.starving_s for g in self.guests)

    @property
    def mean_idle_mib(self) -> float:
        """Memory all guests together held but their programs did not use (free + cache), averaged over the run."""
        return sum(g.mean_idle_mib(self.duration_s) for g in self.guests)

    @property
    def mean_cache_mib(self) -> float:
        return sum(g.mean_cache_mib(self.duration_s) for g in self.guests)

    @property
    def balloon_changes(self) -> int:
        return sum(g.balloon_changes for g in self.guests)

    @property
    def relief_times_s(self) -> list[float]:
        return [t for g in self.guests for t in g.relief_s]

    @property
    def mean_relief_s(self) -> float | None:
        times = self.relief_times_s
        return sum(times) / len(times) if times else None

    @property
    def max_relief_s(self) -> float | None:
        times = self.relief_times_s
        return max(times) if times else None


def run(
    scenario: Scenario,
    config: Config,
    policy: LoopPolicy = MEMCOORD,
    duration_s: float | None = None,
    record: bool = False,
) -> RunReport:
    """Run a scenario to the end and measure it.

    A guest counts as starving while the memory its programs could still get (free + page cache, the true
    MemAvailable) is at or below guest.starving_mib and it is below its maximum (at its maximum no balloon
    policy can help it). Each starving spell that ends is one relief time; a spell still open at the end counts
    as unrelieved and adds its length so far. The host is below its guard while its available memory is below
    host.min_available_mib.
    """
    duration_s = scenario.duration_s if duration_s is None else duration_s
    hv = build_host(scenario)
    state = policy.first_state(config)
    step_s = scenario.step_s
    n_steps = max(1, round(duration_s / step_s))
    tick_every = max(1, round(config.loop.interval_s / step_s))
    starving_kib = mib_to_kib(config.guest.starving_mib)
    all_guests = [*hv.guests.values(), *hv.not_booted.values()]
    reports = {g.name: GuestReport(g.name, g.max_kib / KIB_PER_MIB) for g in all_guests}
    # The hook is memcoord's: the peers have no make-room (their hosts start guests at once).
    hook = _Hook(hv, config, scenario.host.hook_timeout_s) if scenario.host.make_room and policy is MEMCOORD else None
    pressure_s: float | None = None if scenario.host.thrash_below_mib is None else 0.0
    timeline = Timeline() if record else None
    host_min_kib, host_min_at_s = hv.host_available_kib(), 0.0
    guard_kib = mib_to_kib(config.guard_mib(hv.host_total_kib))
    below_guard_s = longest_below_s = 0.0
    below_since_s: float | None = None

    for i in range(n_steps):
        t_s = i * step_s
        if hook is not None:
            hook.step(hv.now_s + step_s)
        if i % tick_every == 0:
            done = step(hv, config, state, policy, reserved_kib=None if hook is None else hook.reserved_kib)
            state = done.state
            if hook is not None:
                hook.answer(done.headroom_kib)
            for result in done.results:
                if result.ok:
                    reports[result.change.domain].balloon_changes += 1
            if timeline is not None:
                timeline.t_s.append(t_s)
                timeline.host_available_mib.append(hv.host_available_kib() / KIB_PER_MIB)
                for g in all_guests:
                    up = g.name in hv.guests  # a guest not booted yet has nothing
                    timeline.current_mib.setdefault(g.name, []).append(g.current_kib / KIB_PER_MIB if up else 0.0)
                    timeline.used_mib.setdefault(g.name, []).append(g.used_kib / KIB_PER_MIB if up else 0.0)
                    timeline.cache_mib.setdefault(g.name, []).append(g.cache_kib / KIB_PER_MIB if up else 0.0)
        hv.advance(step_s)
        now_s = t_s + step_s
        for g in hv.guests.values():
            rep = reports[g.name]
            usable_kib = g.usable_kib
            rep.idle_mib_seconds += usable_kib / KIB_PER_MIB * step_s
            rep.cache_mib_seconds += g.cache_kib / KIB_PER_MIB * step_s
            if g.used_kib > rep.peak_used_mib * KIB_PER_MIB:
                rep.peak_used_mib = g.used_kib / KIB_PER_MIB
            if g.current_kib > rep.peak_size_mib * KIB_PER_MIB:
                rep.peak_size_mib = g.current_kib / KIB_PER_MIB
            if usable_kib <= starving_kib and g.current_kib < g.max_kib:
                rep.starving_s += step_s
                if rep._starving_since_s is None:
                    rep._starving_since_s = now_s - step_s
            elif rep._starving_since_s is not None:
                rep.relief_s.append(now_s - rep._starving_since_s)
                rep._starving_since_s = None
        if pressure_s is not None and hv.pressure_avg10 > PRESSURE_LINE_PCT:
            pressure_s += step_s
        available_kib = hv.host_available_kib()
        if available_kib < host_min_kib:
            host_min_kib, host_min_at_s = available_kib, now_s
        if available_kib < guard_kib:
            below_guard_s += step_s
            if below_since_s is None:
                below_since_s = now_s - step_s
            longest_below_s = max(longest_below_s, now_s - below_since_s)
        else:
            below_since_s = None

    for g in all_guests:
        rep = reports[g.name]
        rep.oom_kills = g.oom_kills
        rep.final_size_mib = g.current_kib / KIB_PER_MIB
        if rep._starving_since_s is not None:
            rep.unrelieved += 1
            rep.relief_s.append(n_steps * step_s - rep._starving_since_s)
    return RunReport(
        scenario=scenario.name,
        policy=policy.name,
        duration_s=n_steps * step_s,
        starving_mib=config.guest.starving_mib,
        host_total_mib=hv.host_total_kib / KIB_PER_MIB,
        host_min_available_mib=host_min_kib / KIB_PER_MIB,
        host_min_at_s=host_min_at_s,
        guests=list(reports.values()),
        timeline=timeline,
        host_guard_mib=config.guard_mib(hv.host_total_kib),
        host_below_guard_s=below_guard_s,
        host_longest_below_guard_s=longest_below_s,
        host_pressure_s=pressure_s,
        boot_waits_s={} if hook is None else hook.waits_s,
    )
