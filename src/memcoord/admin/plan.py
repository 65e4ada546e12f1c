"""`memcoord plan`: what memcoord would do to each guest now, and where each guest would settle.

It decides only on stats memcoord itself would trust: fresh (no older than the daemon's stale-stats limit, three
stats periods and two ticks) and possible (core/sanity.py: a guest's report of more memory than it has, such as
the one its balloon driver sends at boot, is no sample). libvirt's default is no stats period, so a guest
memcoord has never run on reports nothing new: where a managed guest's period is off or its stats unusable,
plan sets the balloon stats period (live only; a polling interval, what `memcoord run` sets too; --no-stats-period
leaves it off) and waits for fresh samples (`fresh_samples`): two, so that the policy sees each guest's trend.

1. now: `decide` on the first sample, then on the second with what it learnt (`decide_now`): each guest's
   class, the action the daemon would take now and why. A guest with no usable sample is left alone, as the
   daemon leaves it, and its row says why.
2. where it settles: the simulated hypervisor seeded from the second sample (`seed_simulator`: each guest's
   size, maximum, used memory, page cache and QEMU resident memory; the host's available memory), the guests'
   use held constant as idle workloads, and the policy run forward tick by tick from the plan of step 1 until no
   change for `quiet_s` or `horizon_s` simulated seconds (`settle`).

Nothing else is written to the hypervisor: no setMemory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from memcoord.core.config import Config, Profile
from memcoord.core.model import (
    KIB_PER_MIB,
    ApplyResult,
    Change,
    DomainSettings,
    DomainStats,
    GuestClass,
    HostStats,
    Plan,
    Snapshot,
    kib_to_mib,
    mib_to_kib,
)
from memcoord.core.policy import PolicyState, decide, free_figure, thresholds_kib
from memcoord.core.port import Hypervisor, HypervisorError
from memcoord.core.sanity import impossible
from memcoord.core.step import MEMCOORD, step
from memcoord.sim.host import KERNEL_USED_KIB, SimGuest, SimulatedHypervisor

# How long the policy is run forward at most, and how long without any change counts as settled.
HORIZON_S = 600.0
QUIET_S = 60.0
# The simulated hypervisor moves in steps this long between ticks (as `memcoord simulate` does).
SIM_STEP_S = 0.1

NO_PERIOD = "its balloon stats period is off (--no-stats-period; memcoord run sets it)"
# A class for domains the policy never sees: running, but libvirt gives no balloon size for them.
NO_BALLOON = "no-balloon"


# -- seeding the simulated hypervisor -----------------------------------------------------------------------
@dataclass
class HeldUse:
    """A workload holding what the guest's programs and kernel use now, for ever (the simulator adds its own
    kernel share, KERNEL_USED_KIB, to any workload's demand; this one already holds the guest's whole use)."""

    used_kib: int

    def demand_kib(self, t_s: float) -> int:
        return self.used_kib - KERNEL_USED_KIB

    def killed(self, t_s: float) -> None:
        """An OOM kill in a guest whose use is held constant: the policy took it below that use. It keeps
        holding it (the guest restarts what died), so the plan shows the policy's error instead of hiding it."""


def trusted(guest_class: GuestClass | None) -> bool:
    return guest_class is not None and guest_class.trusted


def seed_simulator(
    snapshot: Snapshot, managed: Sequence[str], trusted_stats: Mapping[str, bool]
) -> SimulatedHypervisor:
    """The simulated hypervisor holding the sample's managed guests as they are: size, maximum, use, page cache
    and QEMU resident memory, with the host's available memory as sampled. Guests whose stats are not trusted
    report none in the simulation either (the policy leaves them alone)."""
    guests = []
    for dom in snapshot.domains:
        if dom.name not in managed:
            continue
        free_kib, _figure = free_figure(dom)
        has_stats = trusted_stats.get(dom.name, False) and free_kib is not None
        # Used as the simulator counts it (its size less what programs could still get), page cache as what
        # MemAvailable counts beyond MemFree.
        free_kib = free_kib if free_kib is not None else 0
        used_kib = max(0, dom.current_kib - free_kib)
        cache_kib = max(0, free_kib - dom.unused_kib) if dom.usable_kib is not None and dom.unused_kib else 0
        # QEMU's RSS beyond the guest's size is its own overhead: the simulator keeps it apart from guest pages.
        rss_kib = dom.rss_kib if dom.rss_kib is not None else dom.current_kib
        guests.append(
            SimGuest(
                dom.name,
                max_kib=dom.max_kib,
                target_kib=dom.current_kib,
                workload=HeldUse(used_kib),
                has_balloon_stats=has_stats,
                current_kib=dom.current_kib,
                used_kib=used_kib,
                cache_kib=cache_kib,
                rss_kib=min(rss_kib, dom.current_kib),
                overhead_kib=max(0, rss_kib - dom.current_kib),
                last_update_s=(dom.last_update_s or 0) if has_stats else 0,
                reported_unused_kib=dom.current_kib - used_kib - cache_kib,
                reported_usable_kib=dom.current_kib - used_kib,
                reported_current_kib=dom.current_kib,
                settings=dom.settings,
            )
        )
    held_kib = sum(g.rss_kib + g.overhead_kib for g in guests)
    other_kib = max(0, snapshot.host.total_kib - snapshot.host.available_kib - held_kib)
    return SimulatedHypervisor(
        guests,
        host_total_kib=snapshot.host.available_kib + held_kib + other_kib,
        start_s=snapshot.taken_at_s,
        host_other_used_kib=other_kib,
    )


def kernel_reserve_kib(snapshot: Snapshot) -> dict[str, int]:
    """What each guest's kernel keeps of its balloon size out of its own total (balloon.current - MemTotal)."""
    return {
        d.name: d.current_kib - d.own_total_kib
        for d in snapshot.domains
        if d.own_total_kib is not None and d.own_total_kib <= d.current_kib
    }


def with_guest_totals(snapshot: Snapshot, reserve_kib: Mapping[str, int]) -> Snapshot:
    """The simulated hypervisor's sample with each guest's own total (MemTotal) as the real guest reports it:
    the simulator reports its whole size there, and the policy would read the difference as use that grew."""
    domains = tuple(
        replace(d, available_kib=d.available_kib - reserve_kib[d.name])
        if d.available_kib is not None and d.name in reserve_kib
        else d
        for d in snapshot.domains
    )
    return replace(snapshot, domains=domains)


# -- the policy on one sample, then forward -----------------------------------------------------------------
def unusable_why(dom: DomainStats, taken_at_s: float, config: Config) -> str | None:
    """Why the policy must not decide on this guest's latest sample (none, too old, impossible); None when it may.

    Too old: older than the daemon trusts (config.stale_after_s: three stats periods and two ticks)."""
    if not dom.last_update_s or free_figure(dom)[0] is None:
        return "no stats"
    age_s = taken_at_s - dom.last_update_s
    if age_s > config.stale_after_s:
        return f"its latest stats are {age_s:.0f} s old (trusted up to {config.stale_after_s:g} s)"
    bad = impossible(dom)
    return None if bad is None else f"its latest stats cannot be true: {bad}"


def without_stats(dom: DomainStats) -> DomainStats:
    """The guest as the policy sees a guest that reports nothing: it leaves it alone."""
    return replace(dom, unused_kib=None, usable_kib=None, available_kib=None, last_update_s=None)


def usable_only(snapshot: Snapshot, config: Config) -> tuple[Snapshot, dict[str, str]]:
    """The snapshot with every managed guest's unusable sample taken out, and why, by guest."""
    why: dict[str, str] = {}
    domains = []
    for dom in snapshot.domains:
        reason = unusable_why(dom, snapshot.taken_at_s, config) if config.manages(dom.name, dom.settings) else None
        if reason is not None:
            why[dom.name] = reason
            dom = without_stats(dom)
        domains.append(dom)
    return replace(snapshot, domains=tuple(domains)), why


def decide_now(first: Snapshot, second: Snapshot, config: Config) -> tuple[Plan, PolicyState]:
    """The policy's plan for the second sample, having seen the first (each guest's trend between the two)."""
    _plan, state = decide(first, PolicyState(), config)
    return decide(second, state, config)


@dataclass(frozen=True)
class Settlement:
    """Where the policy left each simulated guest: its target; the simulated seconds of its last change, and
    of its balloon's arrival at that target (absent: no change, or still on its way at the end)."""

    target_kib: dict[str, int]
    last_change_s: dict[str, float]
    at_rest_s: dict[str, float]
    simulated_s: float
    settled: bool  # no change for quiet_s before horizon_s
    oom_kills: dict[str, int]


class AsSampled:
    """The seeded simulated host behind the hypervisor port, each of its samples showing the guests' own totals as
    the real guests report them (`with_guest_totals`): what `step` runs on."""

    def __init__(self, sim: SimulatedHypervisor, reserve_kib: Mapping[str, int]) -> None:
        self.sim = sim
        self.reserve_kib = reserve_kib

    def sample(self, deadline_s: float | None = None, only: frozenset[str] | None = None) -> Snapshot:
        return with_guest_totals(self.sim.sample(deadline_s, only), self.reserve_kib)

    def ensure_stats_period(self, names: Iterable[str], period_s: int, deadline_s: float | None = None) -> list[str]:
        return self.sim.ensure_stats_period(names, period_s, deadline_s)

    def stats_period_failures(self) -> Mapping[str, str]:
        return self.sim.stats_period_failures()

    def domain_names(self, deadline_s: float | None = None) -> set[str]:
        return self.sim.domain_names(deadline_s)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        return self.sim.apply(changes, deadline_s)

    def close(self) -> None:
        self.sim.close()


def settle(
    snapshot: Snapshot,
    config: Config,
    plan_now: Plan,
    state: PolicyState,
    horizon_s: float = HORIZON_S,
    quiet_s: float = QUIET_S,
) -> Settlement:
    """Run the daemon's tick (`step`) forward on the simulated hypervisor seeded from the snapshot, starting with
    plan_now (decided on the snapshot itself), one tick every loop.interval_s, until quiet_s without a change or
    horizon_s simulated seconds."""
    managed = sorted(plan_now.classes)
    hv = seed_simulator(snapshot, managed, {n: trusted(c) for n, c in plan_now.classes.items()})
    seen = AsSampled(hv, kernel_reserve_kib(snapshot))
    last_change_s: dict[str, float] = {}
    at_rest_s: dict[str, float] = {}

    def record(results: Iterable[ApplyResult], t_s: float) -> bool:
        """Note when each balloon was last set; whether any was."""
        done = [r.change for r in results if r.ok]
        for change in done:
            last_change_s[change.domain] = t_s
            at_rest_s.pop(change.domain, None)
        return bool(done)

    hv.ensure_stats_period(managed, config.loop.stats_period_s)
    first = hv.apply(plan_now.changes)
    record(first, 0.0)
    state = MEMCOORD.applied(state, first, snapshot.taken_at_s)
    interval_s = config.loop.interval_s
    steps = max(1, round(interval_s / SIM_STEP_S))
    t_s, quiet_since_s = 0.0, 0.0
    settled = False
    while t_s < horizon_s:
        for _ in range(steps):
            hv.advance(interval_s / steps)
        t_s += interval_s
        for g in hv.guests.values():
            if g.name in last_change_s and g.name not in at_rest_s and g.current_kib == g.target_kib:
                at_rest_s[g.name] = t_s
        tick = step(seen, config, state)
        state = tick.state
        if record(tick.results, t_s):
            quiet_since_s = t_s
        elif t_s - quiet_since_s >= quiet_s:
            settled = True
            break
    return Settlement(
        target_kib={g.name: g.target_kib for g in hv.guests.values()},
        last_change_s=last_change_s,
        at_rest_s=at_rest_s,
        simulated_s=t_s,
        settled=settled,
        oom_kills={g.name: g.oom_kills for g in hv.guests.values() if g.oom_kills},
    )


# -- the report ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DomainPlan:
    """One domain's line of the plan. Sizes KiB; None where it does not apply (see the JSON keys in the help)."""

    name: str
    managed: bool
    guest_class: str | None
    current_kib: int | None
    max_kib: int | None
    floor_kib: int | None
    ceiling_kib: int | None
    # The figures decided on, from the guest's latest usable sample (None: none was usable, or not managed).
    usable_kib: int | None
    unused_kib: int | None
    stats_age_s: float | None
    action: str | None
    to_kib: int | None
    why: str
    settled_kib: int | None
    # Simulated seconds until its balloon rests at settled_kib: 0, it stays as it is; None, still moving at the
    # horizon, or not simulated.
    settles_in_s: float | None


@dataclass(frozen=True)
class PlanReport:
    uri: str
    config_path: str
    taken_at_s: float
    # The guests plan set the balloon stats period on (to stats_period_s), so that they report fresh figures.
    stats_period_s: int
    stats_period_set: tuple[str, ...]
    # host.profile, what it does and what the other would do; the comfort target idle reclaim waits for (0: none).
    profile: str
    profile_text: str
    target_available_kib: int
    host: HostStats
    guard_kib: int
    headroom_kib: int
    horizon_s: float
    simulated_s: float
    settled: bool
    domains: tuple[DomainPlan, ...]


def _mib(kib: int) -> str:
    return f"{kib_to_mib(kib):.0f} MiB"


def unmanaged_why(name: str, config: Config, settings: DomainSettings | None) -> str:
    """Why memcoord leaves a domain alone, from the same rule the daemon applies (Config.exclusion)."""
    reason = config.exclusion(name, settings)
    if settings is not None and settings.unballoonable is not None:
        return f"not managed, ballooning cannot help: {settings.unballoonable.why}"
    if reason == "libvirt.exclude":
        return f"not managed: libvirt.exclude ({', '.join(config.libvirt.exclude)}) matches it"
    if reason == "libvirt.domains":
        return f"not managed: libvirt.domains ({', '.join(config.libvirt.domains)}) does not match it"
    if reason == "bad-metadata":
        return "not managed: its memcoord metadata has a key that cannot be believed (see the journal)"
    if reason == "unread":
        return "not managed yet: its libvirt metadata has not been read (it is read within a tick or two)"
    return f"not managed: enabled = false in its {reason} settings"


def untrusted_why(reason: str | None, period_off: bool, period_set: bool) -> str:
    """Why a guest has no stats the policy can use, and what plan did about it (period_off: it needed a stats
    period and plan set none)."""
    if period_off:
        return f"left alone: {NO_PERIOD}"
    reason = reason or "no stats"
    if reason == "no stats":
        reason = "it reports no balloon figures (no balloon driver loaded?)"
    if period_set:
        reason += ", even after plan set its stats period"
    return f"left alone: {reason}"


def steady_why(dom: DomainStats, guest_class: GuestClass, config: Config, plan: Plan) -> str:
    """Why the policy leaves a guest with trusted stats as it is this tick, from the plan's data (its band,
    what it wanted and did not get)."""
    ceiling_kib = config.ceiling_kib(dom.name, dom.max_kib, dom.settings)
    starving_kib, wasteful_kib, _step = thresholds_kib(config, ceiling_kib)
    free_kib, figure = free_figure(dom)
    free = f"{_mib(free_kib or 0)} {figure}"
    band = plan.bands.get(dom.name)
    if guest_class is GuestClass.STARVING:
        low = f"below its low {_mib(band.low_kib)}" if band else "below its low"
        if dom.current_kib >= ceiling_kib:
            return f"starving ({free}, {low}) but at its ceiling {_mib(ceiling_kib)}"
        unmet_kib = plan.unmet_kib.get(dom.name, 0)
        return (
            f"starving ({free}, {low}), no room to grow it now: host guard, budget "
            f"{_mib(plan.host_headroom_kib)}, {_mib(unmet_kib)} wanted"
        )
    if guest_class is GuestClass.WASTEFUL:
        floor_kib = config.floor_kib(dom.name, dom.max_kib, dom.settings)
        if dom.current_kib <= floor_kib:
            where = f"at its floor {_mib(floor_kib)}"
        elif band is not None and dom.current_kib - band.high_kib < KIB_PER_MIB:
            where = "less than a MiB above its high"
        else:
            where = "not lowered this tick"
        return f"wasteful ({free} >= {_mib(wasteful_kib)}) but {where}"
    if guest_class is GuestClass.IDLE:
        return f"idle: {free}, between its starving ({_mib(starving_kib)}) and wasteful ({_mib(wasteful_kib)}) lines"
    return f"{guest_class}: {free}"


def profile_text(config: Config, host_total_kib: int) -> str:
    """Which profile is in force on this host, what it does, and what the other one would do."""
    target_mib = config.target_available_mib(host_total_kib)
    hold_s = config.peak_hold_s()
    kept = f", never below what they used in the last {hold_s:.0f} s" if hold_s else ""
    if target_mib:
        now = (
            f"idle guests give memory back only while the host has less than {target_mib} MiB available or a "
            f"guest starves{kept}"
        )
    else:
        now = f"idle guests give back what they hold above their wasteful line, however much the host has free{kept}"
    other = "density" if config.host.profile == Profile.PRODUCTION.value else "production"
    flipped = config.model_copy(update={"host": config.host.model_copy(update={"profile": other})})
    other_target_mib = flipped.target_available_mib(host_total_kib)
    if other == "production":
        then = (
            f'[host] profile = "production" would reclaim them only below {other_target_mib} MiB available or while a '
            f"guest starves, keeping room for their last {flipped.peak_hold_s() / 60:.0f} minutes' peak"
        )
    else:
        then = '[host] profile = "density" (the seed\'s loop, the default) would take back all they do not use'
    return f"profile {config.host.profile}: {now}; {then}"


def build_report(
    first: Snapshot,
    second: Snapshot,
    config: Config,
    uri: str,
    config_path: str,
    periods_s: Mapping[str, int | None],
    horizon_s: float = HORIZON_S,
    quiet_s: float = QUIET_S,
    period_set: Sequence[str] = (),
    period_off: Sequence[str] = (),
) -> PlanReport:
    """The whole plan from two samples (the second the later): now and settled, for every running domain.

    periods_s: each domain's stats period, 0 when none is set (domains listed there without balloon stats are
    shown as such); period_set: the guests plan set the period on; period_off: those that needed one and plan
    set none (--no-stats-period). A managed guest's sample that is missing,
    too old or impossible is taken out before the policy sees it (`usable_only`): it is left alone, saying why."""
    profile = profile_text(config, second.host.total_kib)
    # What scales with the host (the guard, the profile's values), resolved as the daemon's tick resolves it.
    config = config.for_host(second.host.total_kib)
    first, _unusable = usable_only(first, config)
    snapshot, unusable = usable_only(second, config)
    plan_now, state = decide_now(first, snapshot, config)
    settlement = settle(snapshot, config, plan_now, state, horizon_s, quiet_s)
    changes = {c.domain: c for c in plan_now.changes}
    rows = []
    no_stats: dict[str, Any] = {
        "usable_kib": None,
        "unused_kib": None,
        "stats_age_s": None,
    }
    for dom in sorted(snapshot.domains, key=lambda d: d.name):
        floor_kib = min(
            config.floor_kib(dom.name, dom.max_kib, dom.settings),
            config.ceiling_kib(dom.name, dom.max_kib, dom.settings),
        )
        common: dict[str, Any] = {
            "name": dom.name,
            "current_kib": dom.current_kib,
            "max_kib": dom.max_kib,
        }
        guest_class = plan_now.classes.get(dom.name)
        if guest_class is None:
            rows.append(
                DomainPlan(
                    **common,
                    **no_stats,
                    managed=False,
                    guest_class=None,
                    floor_kib=None,
                    ceiling_kib=None,
                    action=None,
                    to_kib=None,
                    why=unmanaged_why(dom.name, config, dom.settings),
                    settled_kib=None,
                    settles_in_s=None,
                )
            )
            continue
        change = changes.get(dom.name)
        if change is not None:
            why = change.reason
        elif trusted(guest_class):
            why = steady_why(dom, guest_class, config, plan_now)
        else:
            # Taken out before the policy saw it (unusable), or refused by the policy itself.
            reason = unusable.get(dom.name) or plan_now.refused.get(dom.name)
            why = untrusted_why(reason, dom.name in period_off, dom.name in period_set)
        if dom.name in settlement.oom_kills:
            why += f"; simulated OOM kills: {settlement.oom_kills[dom.name]}"
        last_s = settlement.last_change_s.get(dom.name)
        if last_s is None:
            settles_in_s: float | None = 0.0
        elif not settlement.settled and settlement.simulated_s - last_s < quiet_s:
            settles_in_s = None  # it may well change again
        else:
            settles_in_s = settlement.at_rest_s.get(dom.name)
        figures = (
            {
                "usable_kib": dom.usable_kib,
                "unused_kib": dom.unused_kib,
                "stats_age_s": round(snapshot.taken_at_s - dom.last_update_s, 1),
            }
            if dom.last_update_s
            else no_stats
        )
        rows.append(
            DomainPlan(
                **common,
                **figures,
                managed=True,
                guest_class=str(guest_class),
                floor_kib=floor_kib,
                ceiling_kib=config.ceiling_kib(dom.name, dom.max_kib, dom.settings),
                action=str(change.action) if change else None,
                to_kib=change.to_kib if change else None,
                why=why,
                settled_kib=settlement.target_kib[dom.name],
                settles_in_s=settles_in_s,
            )
        )
    sampled = {d.name for d in snapshot.domains}
    for name in sorted(set(periods_s) - sampled):
        rows.append(
            DomainPlan(
                name=name,
                managed=config.manages(name),
                guest_class=NO_BALLOON,
                current_kib=None,
                max_kib=None,
                floor_kib=None,
                ceiling_kib=None,
                **no_stats,
                action=None,
                to_kib=None,
                why="no balloon: libvirt reports no balloon size for it (no virtio balloon device): left alone",
                settled_kib=None,
                settles_in_s=None,
            )
        )
    return PlanReport(
        uri=uri,
        config_path=config_path,
        taken_at_s=snapshot.taken_at_s,
        stats_period_s=config.loop.stats_period_s,
        stats_period_set=tuple(sorted(period_set)),
        profile=config.host.profile,
        profile_text=profile,
        target_available_kib=mib_to_kib(config.host.target_available_mib),
        host=snapshot.host,
        guard_kib=mib_to_kib(config.guard_mib(snapshot.host.total_kib)),
        headroom_kib=plan_now.host_headroom_kib,
        horizon_s=horizon_s,
        simulated_s=settlement.simulated_s,
        settled=settlement.settled,
        domains=tuple(sorted(rows, key=lambda r: r.name)),
    )


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60:02d} s"


def _settles_text(row: DomainPlan, report: PlanReport) -> str:
    if row.settled_kib is None:
        return "-"
    if row.settles_in_s is None:
        return f"moving at {_duration(report.simulated_s)}"
    if row.settles_in_s == 0:
        return "stays"
    return f"after {_duration(row.settles_in_s)}"


COLUMNS = ("DOMAIN", "MANAGED", "CLASS", "SIZE", "MAX", "NOW", "SETTLES AT", "WHEN", "WHY")


def format_text(report: PlanReport) -> str:
    """The plan as a table, sizes in MiB, with a header line on the host and a footer on the simulation."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.taken_at_s))
    lines = [
        f"{report.uri} at {when}: host available {_mib(report.host.available_kib)} of "
        f"{_mib(report.host.total_kib)}, guard {_mib(report.guard_kib)}; config {report.config_path}",
    ]
    lines.append(report.profile_text)
    if report.stats_period_set:
        lines.append(
            f"balloon stats period set to {report.stats_period_s} s on {', '.join(report.stats_period_set)}, "
            "so that they report fresh figures (a polling interval, harmless, and what memcoord run sets; it stays "
            "until the guest stops; --no-stats-period leaves it off)"
        )
    rows: list[tuple[str, ...]] = [COLUMNS]

    def mib(kib: int | None) -> str:
        return "-" if kib is None else f"{kib_to_mib(kib):.0f}"

    for r in report.domains:
        now = f"{r.action} -> {mib(r.to_kib)}" if r.action else "-"
        rows.append(
            (
                r.name,
                "yes" if r.managed else "no",
                r.guest_class or "-",
                mib(r.current_kib),
                mib(r.max_kib),
                now,
                mib(r.settled_kib),
                _settles_text(r, report),
                r.why,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    numeric = {3, 4, 6}
    for row in rows:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    if not report.domains:
        lines.append("(no running domain)")
    ending = (
        f"all at rest after {_duration(report.simulated_s)} simulated"
        if report.settled
        else f"still moving after {_duration(report.simulated_s)} simulated (the bound)"
    )
    lines.append(
        f"sizes in MiB. NOW: this tick's action. SETTLES AT: where the policy takes each guest if its use stays as "
        f"sampled ({ending})."
    )
    return "\n".join(lines)


def to_json(report: PlanReport) -> dict[str, Any]:
    """The report with the keys documented in `memcoord plan --help` (tryout.PLAN_JSON_HELP), in that order."""
    host = {
        "available_kib": report.host.available_kib,
        "total_kib": report.host.total_kib,
        "guard_kib": report.guard_kib,
        "headroom_kib": report.headroom_kib,
        "target_available_kib": report.target_available_kib,
    }
    domains = [
        {
            "name": r.name,
            "managed": r.managed,
            "class": r.guest_class,
            "current_kib": r.current_kib,
            "max_kib": r.max_kib,
            "floor_kib": r.floor_kib,
            "ceiling_kib": r.ceiling_kib,
            "usable_kib": r.usable_kib,
            "unused_kib": r.unused_kib,
            "stats_age_s": r.stats_age_s,
            "action": r.action,
            "to_kib": r.to_kib,
            "why": r.why,
            "settled_kib": r.settled_kib,
            "settles_in_s": r.settles_in_s,
        }
        for r in report.domains
    ]
    return {
        "uri": report.uri,
        "config_path": report.config_path,
        "taken_at_s": report.taken_at_s,
        "stats_period_s": report.stats_period_s,
        "stats_period_set": list(report.stats_period_set),
        "profile": report.profile,
        "host": host,
        "horizon_s": report.horizon_s,
        "simulated_s": report.simulated_s,
        "settled": report.settled,
        "domains": domains,
    }


# -- the command --------------------------------------------------------------------------------------------
def unreachable(uri: str, exc: Exception) -> str:
    """One line naming the URI (the adapters' messages name it already, most of the time)."""
    text = " ".join(str(exc).split())
    return f"memcoord: libvirt unreachable: {text}" + ("" if uri in text else f" ({uri})")


# How long plan waits at least for fresh samples (two stale-stats times, if more).
FRESH_WAIT_MIN_S = 10.0
# How long a one-shot command keeps sampling for the guests whose libvirt metadata the adapter has not read yet
# (it reads about a second's worth per sample, so a host with thousands of guests needs a few).
SETTINGS_WAIT_S = 30.0


def sample_with_settings(hv: Hypervisor, wait_s: float = SETTINGS_WAIT_S) -> Snapshot:
    """A sample in which every running domain's settings have been read, or the last one after wait_s (the
    domains still unread are then left alone and say so, as the daemon does)."""
    give_up_s = time.monotonic() + wait_s
    snapshot = hv.sample()
    while any(d.settings is None for d in snapshot.domains) and time.monotonic() < give_up_s:
        time.sleep(0.2)
        snapshot = hv.sample()
    return snapshot


# Between samples while waiting for fresh stats.
POLL_S = 0.25


def fresh_samples(
    hv: Hypervisor, config: Config, names: Collection[str], first: Snapshot, wait_s: float
) -> tuple[Snapshot, Snapshot]:
    """Two samples in which every one of names has a usable sample (`unusable_why`), the second newer than the
    first (a trend), starting from first; what there is when wait_s runs out (half of it for each). A guest that
    never reports usable stats is left alone by `build_report`, saying why."""
    started_s = time.monotonic()

    def usable(snapshot: Snapshot) -> dict[str, int]:
        return {
            d.name: d.last_update_s or 0
            for d in snapshot.domains
            if d.name in names and unusable_why(d, snapshot.taken_at_s, config) is None
        }

    seen = usable(first)
    while set(seen) < set(names) and time.monotonic() - started_s < wait_s / 2:
        time.sleep(POLL_S)
        first = hv.sample()
        seen = usable(first)
    second = first
    while seen and time.monotonic() - started_s < wait_s:
        time.sleep(POLL_S)
        second = hv.sample()
        now = usable(second)
        if all(now.get(name, 0) > at for name, at in seen.items()):
            break
    return first, second


def needs_period(snapshot: Snapshot, config: Config, periods_s: Mapping[str, int | None]) -> list[str]:
    """The managed guests whose stats period is off, or unknown while their stats are not usable."""
    return sorted(
        d.name
        for d in snapshot.domains
        if config.manages(d.name, d.settings)
        and (
            periods_s.get(d.name) == 0
            or (periods_s.get(d.name) is None and unusable_why(d, snapshot.taken_at_s, config) is not None)
        )
    )


def main(config: Config, config_path: str, as_json: bool, connect: Any = None, set_period: bool = True) -> int:
    """What `memcoord plan` does once its arguments are parsed; returns the exit code."""
    from memcoord.hypervisor.libvirt import LibvirtHypervisor

    if connect is None:
        from memcoord.daemon.connect import connect
    uri = config.libvirt.uri
    try:
        hv = connect(uri)
        try:
            snapshot = sample_with_settings(hv)
            periods_s = hv.stats_periods_s() if isinstance(hv, LibvirtHypervisor) else {}
            off = needs_period(snapshot, config, periods_s)
            period_set: list[str] = []
            if off and set_period:
                for failure in hv.ensure_stats_period(off, config.loop.stats_period_s):
                    print(f"memcoord: {failure}", file=sys.stderr)
                failing = hv.stats_period_failures()
                period_set = [n for n in off if n not in failing]
            managed = {d.name for d in snapshot.domains if config.manages(d.name, d.settings)}
            waiting = managed if set_period else managed - set(off)
            wait_s = max(FRESH_WAIT_MIN_S, 2 * config.stale_after_s)
            first, second = fresh_samples(hv, config, waiting, snapshot, wait_s)
        finally:
            hv.close()
    except HypervisorError as exc:
        print(unreachable(uri, exc), file=sys.stderr)
        return os.EX_UNAVAILABLE
    period_off = [] if set_period else off
    report = build_report(
        first, second, config, uri, config_path, periods_s, period_set=period_set, period_off=period_off
    )
    if as_json:
        json.dump(to_json(report), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_text(report) + "\n")
    return os.EX_OK
