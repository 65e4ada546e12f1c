"""memcoord's balloon policy as one pure function: snapshot + state + config -> plan + next state.

No I/O, no clock, no logging: the same inputs always give the same plan, whatever order the domains are listed
in. `decide` reads top to bottom as one model:

1. sanitize: each guest's stats are untrusted input. A sample a guest could not have taken (`refusal`: free
   memory above its own total or its balloon's size, a report from a balloon size it no longer has) is
   no sample; a new sane sample is folded into the guest's history (`_observe`: its ramp, its recent peak; a report
   stamped long before the last, the wall clock having stepped back, starts it again). The state's times after
   now are taken as now (`_after_a_clock_step`).
2. bands: from a sane sample, once per guest, floor <= low <= high <= ceiling (`_look_at`, public as `bands`).
   Below `low` the guest needs memory now: its starving line plus what its ramp uses until memcoord can act
   again, counting the sample's age. Above `high` while idle it holds memory it does not need: its wasteful
   line, or its recent peak (guest.peak_hold_s). A guest without a sane, fresh sample is held where it is.
3. budget: host available - host.min_available_mib - memory held for a VM about to start - what the guard holds
   for each guest (`_held_kib`): of what QEMU does not back yet, its grant, and while the guest ramps as much as
   its ramp touches in RAMP_HOLD_S (host-side figures only, never a guest's claim; nothing for a guest silent
   longer than the bound). A lowering gives back what QEMU backs above its new target in the same tick.
4. allocate (`_Allocation`), in this order: floors and ceilings (`clamp`); when the host is below its guard or
   under memory pressure, relief from above high, then above low (`give`; under pressure only loans grow); idle
   guests above high give a reclaim step (`reclaim`); guests below low grow from each source in
   `FOR_THE_STARVING` in turn, a scarce amount split by weight (`fill`); then the idle tax (`tax`); busy guests
   below high share what was reclaimed (`fill` again).
5. changes: one per guest that moved, with its typed reason (`model.Reason`).

Every lowering (reclaim, relief, clamp, comfort, tax) stops at the guest's low; every growth reaches at least its
low (as far as budget and ceiling allow) and never sets a balloon below where it is. Starving guests never give.
A move smaller than MIN_MOVE_KIB waits (the band's hysteresis), but for floors, ceilings, relief, the tax and what
a guest lacks to last until memcoord can act again.

Free memory is `balloon.usable` (MemAvailable) where the guest reports it, else `balloon.unused` (MemFree).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, NamedTuple

from memcoord.core.model import (
    KIB_PER_MIB,
    LOWERING_ACTIONS,
    ApplyResult,
    Band,
    Change,
    DomainStats,
    GuestClass,
    Plan,
    Reason,
    Rule,
    Snapshot,
    kib_to_mib,
    mib_to_kib,
)
from memcoord.core.sanity import impossible

if TYPE_CHECKING:
    from memcoord.core.config import Config, DomainRules, GuestConfig

# Stats that move less than this between two samples count as unchanged: smaller moves are noise.
STEADY_TOLERANCE_KIB = KIB_PER_MIB
# A balloon within this of its target has arrived (QEMU stops a few pages short at times).
SETTLED_TOLERANCE_KIB = 4 * KIB_PER_MIB
# How long a balloon takes to move a few hundred MiB once setMemory is called (about a second on real QEMU).
BALLOON_MOVE_S = 1.0
# A guest's low covers this many times what its ramp uses before memcoord can act again: a ramp may steepen and
# a busy guest's next stats may come late. Memory granted and not used is reclaimed later; an OOM kill is not.
RAMP_SAFETY = 2.0
# A ramp seen once is remembered, halving with each later sample that does not repeat it.
RAMP_DECAY = 0.5
# The guard holds what a ramping guest's ramp touches within this long, at most all QEMU has not backed for it
# (`_held_kib`): a ramp that needs longer to reach the rest does not hold it from a starving neighbour now. Ten
# minutes, as long as the production profile holds a guest's peak: the bursts, hogs and sawtooths of the scenarios
# and the real-guest tests reach what they have not touched well within it (over 24 seeds of the older scenarios,
# 1344 OOM kills against 1343 holding all of it; the four hogs of the course ramp 40 MiB/s into 256 MiB), and a
# 16 GiB guest that touched 2 GiB and grows 2 MiB/s no longer holds 14 GiB while a neighbour runs out of memory on
# a host 8 GiB above its guard (scenario slow-ramp-neighbour). A slow ramp that speeds up after its neighbours were
# grown holds all of it again, and neighbours still growing live on what they are lent (scenario accelerating-ramp).
RAMP_HOLD_S = 600.0
# After memcoord lowers a guest, its balloon's move and the guest's next report: figures older than this past
# the lowering may predate the balloon's arrival.
SETTLE_S = 2.0
# A move smaller than this buys a guest no room it can use, and costs a setMemory, a balloon's move and a journal
# line: such moves wait until they are worth making (the band's hysteresis). Floors, ceilings and relief, which
# keep guests and the host safe, move whatever it takes, and so does what a guest lacks to last until memcoord can
# act again when the host has the room (`lend_room`) and an idle tax smaller than this (a trickle by configuration).
MIN_MOVE_KIB = 32 * KIB_PER_MIB
# Relief aims this far above the guard, so that the host does not hover on the line.
RELIEF_MARGIN_KIB = 64 * KIB_PER_MIB
# The bound on silence, in stale-stats periods: a guest whose stats stopped while it ramped is grown on its
# projection this long at most, and what the guard holds for a grant is released after it.
SILENCE_LIMIT_STALE_PERIODS = 3
# A guest that did not give when asked (its balloon did not follow an accepted lowering in the stale time, or libvirt
# refused its lowerings twice within the stale time) balks for this many stale-stats periods: relief asks it only
# after every other guest has given down to its low, and each source for the starving asks it after the others.
# Asked first every time, one such guest (a migrating one, a stuck balloon driver) kept the host below its guard
# while another guest could have given what it lacked (qmemman leaves a domain that makes no progress out the same
# way). Only the order changes. One refusal alone is no evidence (a passing error: a lock, a monitor hiccup), and
# made a neighbour give its buffer, then be OOM-killed by its next burst, when the guest refused would have given
# on the next tick.
NO_PROGRESS_STALE_PERIODS = 6
# Refusals of one guest's lowerings within the stale time that make it balk.
REFUSALS_TO_BALK = 2

# How far growth lifts a guest below its low: a grow step (its grow target), its low, or only what lasts it until
# memcoord can act again.
Aim = Literal["grow", "low", "survive"]


# -- state -----------------------------------------------------------------------------------------------
class Sample(NamedTuple):
    """The last sane stats sample the policy saw for a domain, folded into its history.

    A named tuple, not a frozen dataclass: one is built per guest and new report, and a frozen dataclass's __init__
    costs three times as much (an object.__setattr__ per field)."""

    last_update_s: int
    free_kib: int  # usable, or unused where the guest does not report usable
    current_kib: int  # the balloon's size when the sample was first seen
    steady: bool
    used_kib: int  # what the guest's programs held
    used_by_total: bool  # used_kib is the guest's own total (MemTotal) less free, not balloon.current less free
    ramp_kib_per_s: float = 0.0  # how fast the guest's used memory grows (0 when it does not)
    figure: str = "usable"  # which balloon stat free_kib is
    # The most the guest's programs used lately, and when: a guest that burst once is expected to again.
    peak_used_kib: int = 0
    peak_at_s: int = 0
    # What the balloon holds beyond the guest's own total (its kernel's reservations), from a report taken with
    # the balloon at rest: libvirt's balloon size lags the guest's own report by about a second while it moves.
    kernel_kib: int = 0


@dataclass(frozen=True, slots=True)
class Pending:
    """A target memcoord set that the balloon has not reached yet, when it was set, and where it was set from.
    confirmed: the hypervisor accepted it (not a call whose outcome is unknown, which may never have reached QEMU)."""

    target_kib: int
    set_at_s: float
    from_kib: int
    confirmed: bool = True

    def overtaken(self, current_kib: int) -> bool:
        """The balloon moved away from the target, past where it was set from: something else set it (an admin's
        `virsh setmem`; a deflate-on-OOM guest deflating above a lowering), and memcoord's target no longer says
        where it is heading."""
        if self.target_kib > self.from_kib:
            return current_kib < self.from_kib - SETTLED_TOLERANCE_KIB
        return current_kib > self.from_kib + SETTLED_TOLERANCE_KIB


@dataclass(frozen=True, slots=True)
class PolicyState:
    samples: dict[str, Sample] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    # When memcoord last lowered each guest: its next samples may look busy from the balloon's own move.
    lowered_at_s: dict[str, float] = field(default_factory=dict)
    # Memory memcoord granted each guest that QEMU may not back yet: the guard holds it (`_held_kib`).
    granted_kib: dict[str, int] = field(default_factory=dict)
    # When memcoord last raised each guest.
    raised_at_s: dict[str, float] = field(default_factory=dict)
    # When each guest last did not give when asked (NO_PROGRESS_STALE_PERIODS).
    no_progress_at_s: dict[str, float] = field(default_factory=dict)
    # Each guest's refused lowerings in a row, each within the stale time of the one before: (the last's time, count).
    refusals: dict[str, tuple[float, int]] = field(default_factory=dict)
    # The time of the tick that made it: a tick at an earlier time means the wall clock stepped back.
    at_s: float = 0.0


def applied(state: PolicyState, results: Iterable[ApplyResult], now_s: float) -> PolicyState:
    """Record what became of the plan's changes. One that may have been set (accepted, or sent with no answer in
    time): the next ticks wait for its balloon, and the guard holds what was granted until the guest's balloon and
    QEMU show it, or the bound passes. balloon.current is where the balloon is, not where it is going: deciding
    again from it while it moves would grow a guest twice for one need. A lowering the hypervisor refused counts
    against the guest (REFUSALS_TO_BALK); one that may have landed starts the count again; one never sent says
    nothing of the guest."""
    results = list(results)
    landed = [r for r in results if r.may_have_landed]
    pending = dict(state.pending)
    for r in landed:
        c = r.change
        # A change from a target still on its way, the same way: the balloon set out from where the first did.
        prev = pending.get(c.domain)
        same_way = prev is not None and (prev.target_kib > prev.from_kib) == (c.to_kib > c.from_kib)
        from_kib = prev.from_kib if prev is not None and same_way else c.from_kib
        pending[c.domain] = Pending(c.to_kib, now_s, from_kib, confirmed=r.ok)
    changes = [r.change for r in landed]
    lowered_now = dict.fromkeys((c.domain for c in changes if _lowers(c)), now_s)
    lowered_at_s = {**state.lowered_at_s, **lowered_now}
    raised_at_s = {**state.raised_at_s, **{c.domain: now_s for c in changes if not _lowers(c)}}
    granted_kib = dict(state.granted_kib)
    for c in changes:
        # Lowering takes the untouched grant first (the balloon takes free pages).
        granted_kib[c.domain] = max(0, granted_kib.get(c.domain, 0) + c.delta_kib)
    granted_kib = {n: g for n, g in granted_kib.items() if g}
    refusals = {n: r for n, r in state.refusals.items() if n not in lowered_now}
    no_progress_at_s = dict(state.no_progress_at_s)
    refused = {r.change.domain for r in results if r.sent and not r.may_have_landed and _lowers(r.change)}
    for name in refused:
        refusals[name] = (now_s, refusals.get(name, (now_s, 0))[1] + 1)
        if refusals[name][1] >= REFUSALS_TO_BALK:
            no_progress_at_s[name] = now_s
    return PolicyState(
        state.samples, pending, lowered_at_s, granted_kib, raised_at_s, no_progress_at_s, refusals, state.at_s
    )


def _after_a_clock_step(state: PolicyState, now_s: float) -> PolicyState:
    """The state's times as they can be at now_s. The snapshot's time is the host's wall clock: once it steps back
    (NTP correcting a clock read as local time at boot), the times recorded since lie after now, and each wait
    measured from them (a settle wait, a pending target's, a raise's) would last as long as the step (hours). They
    are taken as now: each wait lasts its length from now, and a pending target still says where the balloon is
    heading (the guard holds a raise on its way). (The guests' stats are stamped on the same clock: `_observe`
    starts a guest's history again from a report stamped longer before its last than the stale time.)"""
    if now_s >= state.at_s:
        return state

    def no_later(times: dict[str, float]) -> dict[str, float]:
        return {n: min(t, now_s) for n, t in times.items()}

    return PolicyState(
        samples=state.samples,
        pending={n: replace(p, set_at_s=min(p.set_at_s, now_s)) for n, p in state.pending.items()},
        lowered_at_s=no_later(state.lowered_at_s),
        granted_kib=state.granted_kib,
        raised_at_s=no_later(state.raised_at_s),
        no_progress_at_s=no_later(state.no_progress_at_s),
        refusals={n: (min(t, now_s), count) for n, (t, count) in state.refusals.items()},
        at_s=now_s,
    )


def _lowers(change: Change) -> bool:
    return change.action in LOWERING_ACTIONS or change.delta_kib < 0


# -- 1. sanitize -----------------------------------------------------------------------------------------
def free_figure(dom: DomainStats) -> tuple[int | None, str]:
    """The guest's free memory as the policy counts it, and the name of the balloon stat it came from."""
    if dom.usable_kib is not None:
        return dom.usable_kib, "usable"
    return dom.unused_kib, "unused"


def refusal(dom: DomainStats, moving: bool) -> str | None:
    """Why this guest's sample cannot be true, or None: what `sanity.impossible` finds (as `memcoord plan` does),
    and figures a report never carries. moving: memcoord moved its balloon lately, so a report from the size it had
    before is expected for a moment, and only its maximum bounds it."""
    for name, kib in (("usable", dom.usable_kib), ("unused", dom.unused_kib), ("MemTotal", dom.available_kib)):
        if kib is not None and kib < 0:
            return f"{name} is negative"
    if dom.usable_kib is not None and dom.unused_kib is None:
        return "usable without unused (one report carries both)"
    why = impossible(dom)
    # Each bound is as loose at the maximum as at any size below it: a sample possible at its own size is there too.
    if moving and (why or dom.current_kib > dom.max_kib):
        return impossible(replace(dom, current_kib=dom.max_kib))
    return why


def _observe(
    prev: Sample | None, dom: DomainStats, peak_hold_s: float, pending: Pending | None, stale_s: float
) -> Sample | None:
    """Fold a new sane sample into the domain's history; a sample with the same timestamp (or one older by less
    than the stale time) is not new.

    A guest is steady when its free memory did not change, or changed exactly as much as the balloon moved (its
    used memory did not change): that is memcoord's doing, not the guest's. Its ramp is its used memory's growth
    per second between samples, over the time between them: a busy guest whose stats come late shows its ramp
    all the same. pending: the target memcoord set that the balloon is on its way to.

    A balloon that inflated between two reports made the kernel drop page cache, and MemAvailable fell by more
    than the balloon took (it counts only part of the cache): such a report shows no new ramp.
    """
    free_kib, figure = free_figure(dom)
    if free_kib is None or not dom.last_update_s:
        return prev
    if prev is not None and dom.last_update_s < prev.last_update_s - stale_s:
        # Stamped longer before the last report than stats stay fresh: the wall clock QEMU stamps them with stepped
        # back (or the guest's stats are from another host's clock), and its history starts again here. Left as
        # an old report, every later one looked older still and was ignored for as long as the step (hours),
        # while the last one before it counted 0 s old.
        prev = None
    if prev is not None and dom.last_update_s <= prev.last_update_s:
        return prev
    total_kib = dom.own_total_kib
    used_kib = (total_kib if total_kib is not None else dom.current_kib) - free_kib
    by_total = dom.available_kib is not None
    kernel_kib = dom.current_kib - total_kib if total_kib is not None else 0
    if prev is None or prev.figure != figure or prev.used_by_total != by_total:
        return Sample(dom.last_update_s, free_kib, dom.current_kib, False, used_kib, by_total, 0.0, figure,
                      used_kib, dom.last_update_s, kernel_kib)  # fmt: skip
    used_grew_kib = used_kib - prev.used_kib
    steady = min(abs(free_kib - prev.free_kib), abs(used_grew_kib)) < STEADY_TOLERANCE_KIB
    # Without the guest's own total, a balloon move between two reports reads as use: no new ramp from it.
    moved = abs(dom.current_kib - prev.current_kib) > SETTLED_TOLERANCE_KIB
    # A deflate-on-OOM guest's total is taken at balloon.current, which libvirt updates about a second after the
    # guest's own report already counts the move: while its balloon moves, the move reads as use too.
    total_lags = dom.settings is not None and dom.settings.deflate_on_oom and (moved or pending is not None)
    interval_s = dom.last_update_s - prev.last_update_s
    # (Or inflates now: memcoord lowered it and libvirt's balloon size, a second behind the guest, is not there.)
    inflated = dom.current_kib < prev.current_kib - SETTLED_TOLERANCE_KIB or (
        pending is not None and pending.target_kib < dom.current_kib
    )
    if moved or pending is not None:
        kernel_kib = prev.kernel_kib
    reads_use = (by_total or not moved) and not total_lags and not inflated
    rate_kib_per_s = used_grew_kib / interval_s if reads_use else 0.0
    ramp_kib_per_s = max(rate_kib_per_s, prev.ramp_kib_per_s * RAMP_DECAY, 0.0)
    if ramp_kib_per_s * interval_s < STEADY_TOLERANCE_KIB:
        ramp_kib_per_s = 0.0
    peak_used_kib, peak_at_s = prev.peak_used_kib, prev.peak_at_s
    if used_kib >= peak_used_kib or dom.last_update_s - peak_at_s > peak_hold_s:
        peak_used_kib, peak_at_s = used_kib, dom.last_update_s
    return Sample(dom.last_update_s, free_kib, dom.current_kib, steady, used_kib, by_total, ramp_kib_per_s, figure,
                  peak_used_kib, peak_at_s, kernel_kib)  # fmt: skip


# -- 2. one band per guest ---------------------------------------------------------------------------------
def lookahead_s(config: Config) -> float:
    """How long until memcoord can act on a guest again: its next stats, the next tick, the balloon's move."""
    return config.loop.stats_period_s + config.loop.interval_s + BALLOON_MOVE_S


def silence_limit_s(config: Config) -> float:
    """How long a silent guest is grown on its projection, and a grant held for it, at most."""
    return SILENCE_LIMIT_STALE_PERIODS * config.stale_after_s


def no_progress_pause_s(config: Config) -> float:
    """How long a guest that did not give when asked is asked after the others."""
    return NO_PROGRESS_STALE_PERIODS * config.stale_after_s


def thresholds_kib(config: Config, size_kib: int) -> tuple[int, int, int]:
    """(starving, wasteful, grow step) for a guest of size_kib: each max(MiB, % of the guest).

    The wasteful line stays at least wasteful_mib - starving_mib above the starving line, whatever the
    percentages, so that one reclaim step (config checks it is smaller) never makes a guest starve.
    """
    return _thresholds_kib(config.guest, size_kib)


def _thresholds_kib(g: GuestConfig, size_kib: int) -> tuple[int, int, int]:
    starving_kib = max(mib_to_kib(g.starving_mib), int(size_kib * g.starving_pct / 100))
    wasteful_kib = max(
        mib_to_kib(g.wasteful_mib),
        int(size_kib * g.wasteful_pct / 100),
        starving_kib + mib_to_kib(g.wasteful_mib - g.starving_mib),
    )
    # Whole MiB, as every move is (a 5 % grow step of 6 GiB, 307.2 MiB, would be set as 307).
    grow_step_kib = _whole_mib(
        max(mib_to_kib(g.grow_step_mib), int(size_kib * g.grow_step_pct / 100)) + KIB_PER_MIB - 1
    )
    return starving_kib, wasteful_kib, grow_step_kib


@dataclass(slots=True)
class _Guest:
    """One managed guest as this tick sees it, its band found once (`_look_at`); target_kib and rule are what
    the allocation has decided for it so far."""

    dom: DomainStats
    name: str
    base_kib: int  # where its balloon is heading: the pending target, else balloon.current
    need_kib: int  # its low before floor and ceiling: a lowered ceiling never takes it below this
    survive_kib: int  # below this it runs out of memory before memcoord can act again, at its ramp
    grow_to_kib: int  # where growth aims: its low, or a grow step up if more
    weight: int
    held_kib: int  # what the guard holds for its grant
    sample: Sample | None = None
    new_sample: bool = False
    settled: bool = False  # trusted figures, a balloon at rest, and a report from after its last lowering
    # A new, steady report that counts its use by its own total (MemTotal), which a balloon's move does not change
    # (but for a deflate-on-OOM guest's, taken at balloon.current): relief may ask it again before a report from
    # after its last lowering.
    steady_by_total: bool = False
    no_progress_at_s: float | None = None  # when it last did not give when asked, within the pause
    free_kib: int | None = None  # at base_kib
    cache_kib: int = 0  # page cache (usable - unused)
    age_s: float = 0.0
    late: bool = False  # its stats are late, and it is grown on its projection
    reach_kib: int = 0  # what its ramp reaches before memcoord can act again (RAMP_SAFETY times)
    touch_kib: int = 0  # what its ramp touches in RAMP_HOLD_S
    # memcoord raised it within the stale time: taking the grant back before it is used makes the two ping-pong;
    # still_growing: and it is not steady again on a new sample (a burst that peaked may give back what it did
    # not use).
    just_raised: bool = False
    still_growing: bool = False
    refused: str | None = None
    pending: Pending | None = None
    target_kib: int = 0
    rule: Rule | None = None
    budget_kib: int = 0  # the host budget when its rule moved it
    # Set by `_look_at` on every way out, once each: a band is built once per guest and tick.
    band: Band = field(init=False)
    guest_class: GuestClass = field(init=False)

    def behind(self, step_kib: int) -> bool:
        """Its balloon is a step or more from where memcoord set it: a stuck or slow balloon is not asked for more
        (what it has yet to give counts for the host already)."""
        return self.dom.current_kib - self.base_kib >= step_kib

    @property
    def balks(self) -> bool:
        """It did not give when last asked (NO_PROGRESS_STALE_PERIODS)."""
        return self.no_progress_at_s is not None

    @property
    def free_belied(self) -> bool:
        """The host shows a move's worth more of its memory free than it reports free (MemFree, where it
        reports it: pages never touched are there, and MemAvailable leaves out the kernel's reserves): QEMU has
        never backed that much of its balloon. QEMU's own share of its RSS counts as none: the configured
        overhead is a guess, and a guess too high would find untouched memory in a guest that touched all it
        has. (Memory the host swapped out of QEMU, or backs with hugepages, looks untouched too: `fill` gives such
        a guest its weight's share all the same.)"""
        dom = self.dom
        free_kib = dom.unused_kib if dom.unused_kib is not None else dom.usable_kib
        return dom.rss_kib is not None and dom.current_kib - dom.rss_kib - (free_kib or 0) >= MIN_MOVE_KIB

    def aim_kib(self, aim: Aim) -> int:
        """Where growth toward `aim` takes it: its grow target, its low, or what lasts it until memcoord can act
        again."""
        return self.grow_to_kib if aim == "grow" else self.band.low_kib if aim == "low" else self.survive_kib

    def reason(self) -> Reason:
        assert self.rule is not None
        ramp = self.sample.ramp_kib_per_s if self.sample else 0.0
        figure = self.sample.figure if self.sample else "usable"
        return Reason(self.rule, self.band, self.budget_kib, self.weight, self.free_kib, figure, ramp, self.age_s)


@dataclass(frozen=True, slots=True)
class _Clock:
    """What every guest's look needs of the config and the clock, worked out once per tick."""

    now_s: float
    stale_s: float  # stats older than this are not trusted
    silence_s: float  # the bound on silence (`silence_limit_s`)
    no_progress_s: float  # how long a guest that did not give when asked is asked after the others
    lookahead_s: float
    overhead_kib: int
    peak_hold_s: float
    guest: GuestConfig
    # A host has a few guest sizes, and every guest asks for its size's thresholds: each size's are worked out
    # once per tick.
    thresholds_kib_by_size_kib: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    @staticmethod
    def of(config: Config, now_s: float) -> _Clock:
        overhead_kib = mib_to_kib(config.host.guest_overhead_mib)
        return _Clock(now_s, config.stale_after_s, silence_limit_s(config), no_progress_pause_s(config),
                      lookahead_s(config), overhead_kib,
                      config.guest.peak_hold_s, config.guest)  # fmt: skip

    def thresholds_kib(self, size_kib: int) -> tuple[int, int, int]:
        """`thresholds_kib` of this tick's config."""
        found = self.thresholds_kib_by_size_kib.get(size_kib)
        if found is None:
            found = self.thresholds_kib_by_size_kib[size_kib] = _thresholds_kib(self.guest, size_kib)
        return found


def _look_at(dom: DomainStats, rules: DomainRules, state: PolicyState, clock: _Clock) -> _Guest:
    """The guest's sample, class and band, found once. rules: what the config means for it."""
    name, now_s = dom.name, clock.now_s
    pending = state.pending.get(name)
    no_progress_at_s = state.no_progress_at_s.get(name)
    if pending is not None:
        arrived = abs(dom.current_kib - pending.target_kib) <= SETTLED_TOLERANCE_KIB
        expired = now_s - pending.set_at_s > clock.stale_s
        # Believed where it is after the stale time; a guest whose balloon did not follow an accepted lowering balks.
        lowering = pending.confirmed and pending.target_kib < pending.from_kib
        if expired and not arrived and lowering and abs(dom.current_kib - pending.from_kib) <= SETTLED_TOLERANCE_KIB:
            no_progress_at_s = now_s
        if arrived or expired or pending.overtaken(dom.current_kib):  # (overtaken: set elsewhere)
            pending = None
    if no_progress_at_s is not None and now_s - no_progress_at_s > clock.no_progress_s:
        no_progress_at_s = None
    base_kib = pending.target_kib if pending else dom.current_kib
    ceiling_kib = rules.ceiling_kib
    floor_kib = min(rules.floor_kib, ceiling_kib)
    lowered_at_s = state.lowered_at_s.get(name)
    moving = pending is not None or (lowered_at_s is not None and now_s - lowered_at_s <= clock.stale_s)
    prev = state.samples.get(name)
    refused = refusal(dom, moving) if free_figure(dom)[0] is not None and dom.last_update_s else None
    sample = prev if refused else _observe(prev, dom, clock.peak_hold_s, pending, clock.stale_s)
    age_s = max(0.0, now_s - sample.last_update_s) if sample else 0.0
    # What its ramp uses until memcoord can act again, counting the sample's age (bounded by the silence limit).
    ramp_kib_per_s = sample.ramp_kib_per_s if sample and not refused else 0.0
    ramp_kib = int(ramp_kib_per_s * (min(age_s, clock.silence_s) + clock.lookahead_s))
    reach_kib, touch_kib = int(RAMP_SAFETY * ramp_kib), int(ramp_kib_per_s * RAMP_HOLD_S)
    held_kib = _held_kib(dom, base_kib, state, clock, age_s if sample else None, reach_kib, touch_kib)
    new_sample = sample is not None and sample is not prev
    raised_at_s = state.raised_at_s.get(name)
    just_raised = raised_at_s is not None and now_s - raised_at_s <= clock.stale_s
    g = _Guest(dom, name, base_kib, base_kib, 0, base_kib, rules.weight, held_kib, sample, new_sample,
               no_progress_at_s=no_progress_at_s, refused=refused, pending=pending, target_kib=base_kib,
               just_raised=just_raised, reach_kib=reach_kib, touch_kib=touch_kib,
               still_growing=just_raised and not (new_sample and sample is not None and sample.steady))  # fmt: skip
    # Held where it is: a guest with no sane sample, or one too old, moves only to its floor or ceiling.
    kept_kib = min(max(base_kib, floor_kib), ceiling_kib)
    if refused or sample is None:
        g.guest_class = GuestClass.BAD_STATS if refused else GuestClass.NO_STATS
        g.band = Band(floor_kib, kept_kib, kept_kib, ceiling_kib, "no sane stats: held where it is")
        return g
    g.age_s = age_s
    fresh = age_s <= clock.stale_s
    # Sized on the guest's configured size, not where its balloon is now.
    starving_kib, wasteful_kib, grow_step_kib = clock.thresholds_kib(ceiling_kib)
    # What it holds whatever its balloon's size: its use by its own total and its kernel's share of the balloon;
    # without its own total, the balloon's size the report saw less its free memory.
    by_total = sample.used_by_total
    occupied_kib = sample.used_kib + sample.kernel_kib if by_total else sample.current_kib - sample.free_kib
    g.free_kib = base_kib - occupied_kib
    if dom.usable_kib is not None and dom.unused_kib is not None:
        g.cache_kib = max(0, dom.usable_kib - dom.unused_kib)
    g.survive_kib = min(occupied_kib + ramp_kib, ceiling_kib)
    ramp_kib = int(RAMP_SAFETY * ramp_kib)
    # The starving line belongs to the starving (free <= starving_mib, as the seed has it): low is one MiB above.
    need_kib = occupied_kib + starving_kib + ramp_kib + KIB_PER_MIB
    g.need_kib = need_kib
    high_kib = occupied_kib + wasteful_kib
    peak_kib = 0
    if clock.peak_hold_s and sample.peak_used_kib > sample.used_kib:
        # Its recent peak, plus what the kernel keeps of the balloon beyond the guest's own total.
        peak_kib = sample.peak_used_kib + sample.kernel_kib + starving_kib
        high_kib = max(high_kib, peak_kib)
    # A grow step at least, but a guest grown on its projection (stats late) only to its low.
    g.grow_to_kib = min(max(need_kib, base_kib + (grow_step_kib if fresh else 0), floor_kib), ceiling_kib)
    g.late = not fresh and age_s <= clock.silence_s and ramp_kib_per_s > 0 and base_kib <= need_kib
    if not fresh and not g.late:
        g.guest_class = GuestClass.STALE
        g.band = Band(floor_kib, kept_kib, kept_kib, ceiling_kib, "stale stats: held where it is")
        return g
    why = f"{occupied_kib // KIB_PER_MIB} MiB held + starving {starving_kib // KIB_PER_MIB}"
    if ramp_kib:
        why += f" + ramp {ramp_kib // KIB_PER_MIB}"
    if peak_kib == high_kib:
        why += f"; recent peak {sample.peak_used_kib // KIB_PER_MIB} MiB held"
    low_kib = min(max(need_kib, floor_kib), ceiling_kib)
    g.band = Band(floor_kib, low_kib, min(max(high_kib, low_kib), ceiling_kib), ceiling_kib, why)
    # One step per new report, and none while its use grows: a lowering on its way hides a ramp (`_observe`), and
    # relief stacked on one report took a guest bursting 100 MiB/s into an OOM kill in a cold review's model.
    deflates = dom.settings is not None and dom.settings.deflate_on_oom
    g.steady_by_total = fresh and by_total and new_sample and sample.steady and not deflates
    g.settled = fresh and pending is None and (lowered_at_s is None or sample.last_update_s >= lowered_at_s + SETTLE_S)
    if base_kib < need_kib:
        g.guest_class = GuestClass.STARVING
    elif not sample.steady:
        g.guest_class = GuestClass.BUSY
    elif base_kib >= high_kib:
        g.guest_class = GuestClass.WASTEFUL
    else:
        g.guest_class = GuestClass.IDLE
    return g


def _managed(snapshot: Snapshot, state: PolicyState, config: Config) -> list[_Guest]:
    clock = _Clock.of(config, snapshot.taken_at_s)
    state = _after_a_clock_step(state, snapshot.taken_at_s)
    ruled = ((d, config.domain_rules(d.name, d.max_kib, d.settings)) for d in snapshot.domains)
    managed = sorted(((d, r) for d, r in ruled if r.exclusion is None), key=lambda dr: dr[0].name)
    return [_look_at(d, rules, state, clock) for d, rules in managed]


def bands(snapshot: Snapshot, state: PolicyState, config: Config) -> dict[str, Band]:
    """Each managed guest's band, as `decide` finds it on this snapshot."""
    return {g.name: g.band for g in _managed(snapshot, state, config)}


# -- 3. the budget ---------------------------------------------------------------------------------------
def _held_kib(
    dom: DomainStats,
    base_kib: int,
    state: PolicyState,
    clock: _Clock,
    age_s: float | None,
    reach_kib: int,
    touch_kib: int,
) -> int:
    """What the guard holds for this guest, of what QEMU does not back yet (host-side: its target plus QEMU's
    overhead, less its RSS): what memcoord granted it, and while it ramps what its ramp reaches before memcoord
    can act again (reach_kib) and touches in RAMP_HOLD_S (touch_kib); nothing for a guest silent longer than the
    bound. A guest's figures can only make the guard hold memory the host already gave it."""
    grant_kib = max(state.granted_kib.get(dom.name, 0), reach_kib)
    if not grant_kib or age_s is None or age_s > clock.silence_s:
        return 0
    if dom.rss_kib is None:
        return grant_kib
    unbacked_kib = _unbacked_kib(dom.rss_kib, base_kib, clock.overhead_kib)
    # A ramping guest touches what it never touched before it needs more: on real guests four hogs ramping from
    # 512 MiB guests (a quarter of a GiB each never backed) took the host 246 MiB below its guard while the guard
    # held only what their ramps reached. As far as its ramp goes in RAMP_HOLD_S.
    return min(unbacked_kib, max(grant_kib, touch_kib))


def _unbacked_kib(rss_kib: int, target_kib: int, overhead_kib: int) -> int:
    """What QEMU does not back yet of a guest at target_kib (host-side: the target plus QEMU's overhead, less its
    RSS)."""
    return max(0, target_kib + overhead_kib - rss_kib)


def _budget_kib(snapshot: Snapshot, guests: list[_Guest], config: Config) -> int:
    host = snapshot.host
    guard_kib = mib_to_kib(config.host.min_available_mib)
    return host.available_kib - guard_kib - host.reserved_kib - sum(g.held_kib for g in guests)


def host_headroom_kib(snapshot: Snapshot, config: Config, state: PolicyState | None = None) -> int:
    """The budget before any plan: host available - guard - reserved - granted but not yet backed."""
    return _budget_kib(snapshot, _managed(snapshot, state or PolicyState(), config), config)


def _under_pressure(snapshot: Snapshot, config: Config) -> bool:
    """The host's PSI memory pressure is above host.pressure_relief_pct (0: not looked at)."""
    pressure = snapshot.host.pressure_some_avg10
    limit = config.host.pressure_relief_pct
    return bool(limit) and pressure is not None and pressure > limit


# -- 4. one allocator ------------------------------------------------------------------------------------
def _whole_mib(kib: int) -> int:
    return kib - kib % KIB_PER_MIB


class _Allocation:
    """The targets being planned and the budget they leave. Growth spends the budget (what it sets above the
    balloon's size); a lowering gives back what the guard held for the guest's untouched grant (the balloon takes
    it first) and what QEMU backs above the new target (host-side: RSS less overhead), which it releases as the
    balloon inflates, within the second in which a grown balloon deflates."""

    def __init__(self, guests: list[_Guest], budget_kib: int, config: Config) -> None:
        self.guests = guests
        self.budget_kib = budget_kib
        self.keep_kib = 0  # what growth leaves of the budget: relief's margin, once relief ran
        self.config = config
        self.notes: list[str] = []
        self.reclaimed_kib = 0
        self.overhead_kib = mib_to_kib(config.host.guest_overhead_mib)
        self.by_name = {g.name: g for g in guests}
        self.starving = [g for g in guests if g.guest_class is GuestClass.STARVING]  # a class holds all tick

    def move(self, g: _Guest, to_kib: int, rule: Rule, least_kib: int = MIN_MOVE_KIB) -> int:
        """Set g's target (whole MiB from where it is), unless that moves it less than least_kib; returns how far
        it moved."""
        delta_kib = to_kib - g.target_kib
        delta_kib = delta_kib - delta_kib % KIB_PER_MIB if delta_kib > 0 else -_whole_mib(-delta_kib)
        if not delta_kib or abs(delta_kib) < least_kib:
            return 0
        held_before_kib = self._held(g)
        backed_before_kib = _backed_above_kib(g, g.target_kib, self.config)
        cost_kib = max(0, g.target_kib + delta_kib - max(g.target_kib, g.dom.current_kib)) if delta_kib > 0 else 0
        g.rule, g.budget_kib = rule, self.budget_kib
        g.target_kib += delta_kib
        released_kib = _backed_above_kib(g, g.target_kib, self.config) - backed_before_kib
        self.budget_kib += held_before_kib - self._held(g) - cost_kib + max(0, released_kib)
        return abs(delta_kib)

    def _held(self, g: _Guest) -> int:
        """What the guard holds for g at its planned target. A lowering takes its untouched grant first (the
        balloon takes free pages), but leaves what its ramp touches in RAMP_HOLD_S of what QEMU still has not
        backed: given to a neighbour, that memory was touched twice (a 16 GiB guest growing 2 MiB/s gave 135 MiB
        of never-backed memory, and a starving neighbour was grown by 135 MiB out of the hold for its ramp)."""
        lowered_kib = max(0, g.base_kib - g.target_kib)
        held_kib = max(0, g.held_kib - lowered_kib)
        if lowered_kib and g.touch_kib and g.dom.rss_kib is not None:
            unbacked_kib = _unbacked_kib(g.dom.rss_kib, g.target_kib, self.overhead_kib)
            held_kib = max(held_kib, min(g.touch_kib, unbacked_kib, g.held_kib))
        return held_kib

    def lower(
        self, g: _Guest, want_kib: int, rule: Rule, stop_kib: int | None = None, least_kib: int = MIN_MOVE_KIB
    ) -> int:
        """Lower g by up to want_kib, never below its low (or stop_kib) nor its floor; returns what was taken."""
        stop_kib = max(g.band.low_kib if stop_kib is None else stop_kib, g.band.floor_kib)
        if stop_kib >= g.target_kib:
            return 0
        return self.move(g, max(stop_kib, g.target_kib - max(0, want_kib)), rule, least_kib)

    def raise_(self, g: _Guest, want_kib: int, rule: Rule, least_kib: int = MIN_MOVE_KIB) -> int:
        """Raise g by up to want_kib from where its balloon is (never below balloon.current), within its
        ceiling; returns what it got. The last step to the ceiling is made whatever its size: no larger one can
        follow it (a starving guest 26 MiB below its ceiling was left there with 32 MiB free)."""
        start_kib = max(g.target_kib, g.dom.current_kib) if g.guest_class is GuestClass.STARVING else g.target_kib
        got_kib = min(want_kib, g.band.ceiling_kib - start_kib)
        if got_kib < KIB_PER_MIB:  # given nothing, a lowering on its way is not undone either
            return 0
        # (Within SETTLED_TOLERANCE_KIB it is there: QEMU stops a few pages short at times.)
        to_ceiling = start_kib + got_kib == g.band.ceiling_kib and got_kib > SETTLED_TOLERANCE_KIB
        return self.move(g, start_kib + got_kib, rule, 0 if to_ceiling else least_kib)

    def lendable_kib(self) -> int:
        """What the guard holds for grants of guests planned at or above their low (their ceiling, for one whose
        ramp asks for more), or not ramping, beyond what each needs to last until memcoord can act again: that
        margin may come to the host later or never; an OOM kill comes now. A ramping guest still short of its low
        will touch its grant; one that does not ramp will not before memcoord can act again (a big guest below its
        percentage starving line with hundreds of MiB free held its grant while a neighbour ran out)."""
        margins_kib = sum(
            min(self._held(g), max(0, g.target_kib - g.survive_kib))
            for g in self.guests
            if g.target_kib >= g.band.low_kib or not g.reach_kib
        )
        return min(margins_kib, max(0, self._above_guard_kib()))  # never the guard itself

    def room_kib(self) -> int:
        """What the host has above its guard (and relief's margin) beyond what every guest's ramp reaches before
        memcoord can act again: memory nobody touches before memcoord can act again, whoever the guard holds it
        for."""
        near_kib = sum(min(self._held(g), g.reach_kib) for g in self.guests)
        return max(0, self._above_guard_kib() - near_kib)

    def _above_guard_kib(self) -> int:
        """What the host has above its guard (and relief's margin) as planned so far: the budget and what the
        guard holds for grants and ramps."""
        return self.budget_kib - self.keep_kib + sum(self._held(g) for g in self.guests)

    # -- the steps, in decide's order
    def clamp(self) -> None:
        """Below the floor: raised to it, even with the host below its guard (safe without stats). Above the
        ceiling: lowered a reclaim step at a time, never below what the guest needs (a ceiling lowered under
        what its programs use waits until they free it)."""
        step_kib = mib_to_kib(self.config.guest.reclaim_step_mib)
        for g in self.guests:
            if g.base_kib < g.band.floor_kib and g.dom.current_kib < g.band.floor_kib:
                self.move(g, g.band.floor_kib, Rule.FLOOR, least_kib=0)
            elif g.settled and g.base_kib > g.band.ceiling_kib and g.guest_class is not GuestClass.STARVING:
                stop_kib = max(g.band.ceiling_kib, g.need_kib)
                if stop_kib > g.band.ceiling_kib:
                    self.notes.append(
                        f"{g.name}: above its ceiling, but its programs need {kib_to_mib(g.need_kib):.0f} MiB: the "
                        "rest waits until they free it"
                    )
                self.lower(g, step_kib, Rule.CEILING, stop_kib=stop_kib, least_kib=0)

    def reclaim(self, allowed: bool) -> None:
        """Each idle guest above its high, on a sample new this tick (never twice on one set of figures), gives
        a reclaim step toward its high; not one memcoord just raised (taking a grant back before it is used
        makes the two ping-pong). A configured step smaller than MIN_MOVE_KIB is a trickle the admin chose: it is
        made whatever its size; and so is the last step to a high pinned at the guest's floor, which is
        configuration, not a figure that wobbles with the guest's use (hysteresis would leave it short of it)."""
        step_kib = mib_to_kib(self.config.guest.reclaim_step_mib)
        for g in self.guests:
            if (
                allowed
                and g.guest_class is GuestClass.WASTEFUL
                and g.new_sample
                and g.settled
                and g.rule is None
                and not g.just_raised
            ):
                least_kib = 0 if g.band.high_kib == g.band.floor_kib else min(MIN_MOVE_KIB, step_kib)
                self.reclaimed_kib += self.lower(g, step_kib, Rule.RECLAIM, g.band.high_kib, least_kib)

    def fill(
        self,
        wants_kib: dict[str, int],
        rule: Rule,
        amount_kib: int,
        beyond_budget: bool = False,
        least_kib: int = MIN_MOVE_KIB,
        whole: bool = False,
    ) -> None:
        """Split up to amount_kib of the budget among guests by weight, each capped by what it wants
        (water-filling: max-min fair by weight), in O(n log n). whole: each gets all it wants or nothing. A share
        too small to move goes to the guests after it, who want more (by weight).

        But for a loan (what a guest lacks to last until memcoord can act again, smallest first), a guest whose
        claim of free memory the host belies (`_Guest.free_belied`) comes first: it gets at most its weight's
        share, never the shares too small to move that the others leave. Claiming to starve on memory it never
        touched, with the most wanted, one took a scarce budget's every move, tick after tick, from a neighbour
        that did starve."""
        left_kib = max(0, amount_kib if beyond_budget else min(amount_kib, self.budget_kib - self.keep_kib))
        if left_kib < KIB_PER_MIB:  # every share would be less than a MiB: nobody moves
            return
        by_name = self.by_name
        loan = rule is Rule.LENT
        wants = sorted(
            (loan or not by_name[n].free_belied, w / by_name[n].weight, n, w)
            for n, w in wants_kib.items()
            if w >= KIB_PER_MIB
        )
        weight = sum(by_name[n].weight for _, _, n, _ in wants)
        for _believed, _per_weight, name, want_kib in wants:
            if left_kib < KIB_PER_MIB:
                break
            g = by_name[name]
            if whole:
                share_kib = want_kib if want_kib <= left_kib else 0
            else:  # the last: all that is left
                share_kib = min(want_kib, _whole_mib(int(left_kib * g.weight / weight)))
            left_kib -= self.raise_(g, share_kib, rule, least_kib)
            weight -= g.weight

    def lend_room(self, lacks_kib: dict[str, int]) -> None:
        """Each guest short of lasting until memcoord can act again is lent what it lacks from the host's room
        (`room_kib`) whatever its size (a safety move), all of it or nothing: part of it buys a setMemory, not the
        time (40 guests each 28 MiB short of 340 MiB got 8 MiB each, and all ran out). The smallest lacks by
        weight first. Each guest lent is then lifted to a move worth making (MIN_MOVE_KIB, never past its low)
        as far as the room goes: not a setMemory of a few MiB every tick."""
        before_kib = {n: self.by_name[n].target_kib for n in lacks_kib}
        self.fill(lacks_kib, Rule.LENT, self.room_kib(), beyond_budget=True, least_kib=0, whole=True)
        top_ups_kib = {}
        for name, was_kib in before_kib.items():
            g = self.by_name[name]
            if (lent_kib := g.target_kib - was_kib) > 0:
                top_ups_kib[name] = min(MIN_MOVE_KIB - lent_kib, g.band.low_kib - g.target_kib)
        self.fill(top_ups_kib, Rule.LENT, self.room_kib(), beyond_budget=True, least_kib=0)

    def unmet_kib(self, aim: Aim) -> dict[str, int]:
        """What each guest below its low still lacks to reach its `aim`."""
        return {g.name: lack_kib for g in self.starving if (lack_kib := g.aim_kib(aim) - g.target_kib) >= KIB_PER_MIB}

    def give(
        self,
        need_kib: int,
        rule: Rule,
        line: Literal["high", "low"],
        cache_only: bool = False,
        who: Literal["all", "others", "balkers"] = "all",
    ) -> int:
        """Others give toward a need, each down to its band's `line` (and its floor), a relief step in the tick
        at most, until the need is covered; returns what was not. Starving guests never give.

        For the host (RELIEF) the most above its line gives first, each its whole step (a safety move made
        whatever its size), and what counts is what QEMU releases (memory it never backed gives the host
        nothing); above their high, a guest whose use its own total counts (MemTotal, which a balloon's move does
        not change) is asked a step on each new steady report, from where its balloon is heading, while the
        balloon is less than a step from there: waiting for a report from after each lowering, a relief step every
        3 s, kept a host 700 MiB below its guard for 9 s on real guests.
        For the starving (SURPLUS, COMFORT) the guest with the most page cache gives first (its kernel
        drops cache without a process losing memory), then the most above its line; what counts is what each
        gives, which reaches them through the host on the next ticks (at once where it was an untouched grant);
        and a guest memcoord is still growing keeps its grant (taking it back before it is used makes the two
        ping-pong). cache_only: each gives no more than its page cache. Guests that did not give when last asked
        give after the others (NO_PROGRESS_STALE_PERIODS); who: all, or only the others, or only those."""
        for_host = rule is Rule.RELIEF
        step_kib = mib_to_kib(self.config.host.relief_step_mib)
        stop = {g.name: g.band.high_kib if line == "high" else g.band.low_kib for g in self.guests}
        givers = [
            g
            for g in self.guests
            if (g.settled or (for_host and line == "high" and g.steady_by_total and not g.behind(step_kib)))
            and g.target_kib > stop[g.name]
            and g.guest_class is not GuestClass.STARVING
            and (for_host or (g.rule is None and not g.still_growing))
            and (g.cache_kib >= MIN_MOVE_KIB or not cache_only)
            and (who == "all" or g.balks == (who == "balkers"))
        ]
        givers.sort(key=lambda g: (g.balks, 0 if for_host else -g.cache_kib, stop[g.name] - g.target_kib, g.name))
        for g in givers:
            if need_kib <= 0:
                break
            want_kib = step_kib - (g.base_kib - g.target_kib) if for_host else min(step_kib, need_kib)
            want_kib = min(want_kib, g.cache_kib) if cache_only else want_kib
            released_before_kib = _backed_above_kib(g, g.target_kib, self.config)
            given_kib = self.lower(g, want_kib, rule, stop[g.name], least_kib=0 if for_host else MIN_MOVE_KIB)
            released_kib = _backed_above_kib(g, g.target_kib, self.config) - released_before_kib
            need_kib -= released_kib if for_host else given_kib
        return max(0, need_kib)

    def tax(self) -> None:
        """The seed's idle tax: when a guest below low grows this tick, or still lacks memory, each idle guest owes
        idle_tax_mib (or what it has above the middle of its band, if less: a tax, not a drain), and it goes to
        those guests in this tick, up to their ceilings: no more is taken than they can receive, nor than the host
        has above its guard beyond this tick's growth (the balloons taking it back within a second). What is owed
        is paid by the idle guests with the most above the middle of their band, each in a move worth making
        (MIN_MOVE_KIB, or idle_tax_mib if more), never below that middle: a few setMemory calls instead of one per
        idle guest, and the next tick's payers are the ones that have the most left."""
        wants_kib = {g.name: g.band.ceiling_kib - g.target_kib for g in self.starving}
        payable_kib = min(self._above_guard_kib(), sum(w for w in wants_kib.values() if w >= KIB_PER_MIB))
        tax_kib = mib_to_kib(self.config.guest.idle_tax_mib)
        payers, owed_kib = [], 0
        for g in self.guests:
            if g.guest_class is GuestClass.IDLE and g.settled and g.rule is None and not g.just_raised:
                middle_kib = (g.band.low_kib + g.band.high_kib) // 2
                payers.append((middle_kib - g.target_kib, g.name, g, middle_kib))
                owed_kib += _whole_mib(min(tax_kib, max(0, g.target_kib - middle_kib)))
        owed_kib, collected_kib = min(owed_kib, payable_kib), 0
        for _, _, g, middle_kib in sorted(payers):
            if collected_kib >= owed_kib:
                break
            share_kib = min(max(tax_kib, MIN_MOVE_KIB), owed_kib - collected_kib)
            collected_kib += self.lower(g, share_kib, Rule.TAX, middle_kib, 0)
        self.fill(wants_kib, Rule.NEED, collected_kib, beyond_budget=True, least_kib=0)

    def changes(self) -> tuple[Change, ...]:
        out = []
        for g in self.guests:
            if g.rule is not None and g.target_kib != g.base_kib:
                why = g.reason()
                out.append(Change(g.name, g.rule.action, g.base_kib, g.target_kib, why.text(), why))
        return tuple(out)


def _backed_above_kib(g: _Guest, target_kib: int, config: Config) -> int:
    """Memory QEMU backs for this guest beyond target_kib (plus its overhead): what it must give back."""
    if g.dom.rss_kib is None:
        return 0
    return max(0, g.dom.rss_kib - mib_to_kib(config.host.guest_overhead_mib) - target_kib)


# -- the whole tick ------------------------------------------------------------------------------------------
class _Giver(NamedTuple):
    """Others giving toward guests below their low (`_Allocation.give`)."""

    rule: Rule  # what the lowering is called
    line: Literal["high", "low"]  # each gives down to this line of its band
    cache_only: bool = False  # each gives no more than its page cache


class _Source(NamedTuple):
    """One place guests below their low get memory from."""

    aim: Aim  # how far it lifts them
    giver: _Giver | None  # others give first (None: nobody gives)
    # Then what lifts them: the host budget (with what the givers' untouched grants gave back at once), what the
    # guard holds for others' grants ("lent"), the host's room beyond what every ramp reaches before memcoord can
    # act again ("room"), or nothing this tick (what was given reaches them through the host).
    lift: Literal["budget", "lent", "room"] | None


# Where guests below their low get memory from, in decide's order: what costs others least first. A giver's
# memory between its low and high is its own buffer against its next burst, so it is lent only for what a guest
# lacks to last until memcoord can act again ("survive"); only its page cache goes toward the guest's low.
FOR_THE_STARVING = (
    _Source("grow", None, "budget"),  # the host budget: to its low, or a grow step up if more
    _Source("low", _Giver(Rule.SURPLUS, "high"), "budget"),  # others' surplus above their high
    _Source("survive", None, "lent"),  # what the guard holds for others' grants beyond their own need
    # The host's room beyond every guest's next seconds, in moves of any size (`lend_room`): a guest growing
    # 10 MiB/s lacks less than a move worth making until it has no time left, and was OOM-killed with the host
    # GiBs above its guard while the guard held a slow ramp's next ten minutes (scenario accelerating-ramp).
    _Source("survive", None, "room"),
    _Source("survive", _Giver(Rule.COMFORT, "low"), "budget"),  # others' comfort between their low and high
    # Others' page cache: spent at once rather than through the host, it cost fleet-50 two OOM kills.
    _Source("low", _Giver(Rule.COMFORT, "low", cache_only=True), None),
)


def decide(snapshot: Snapshot, state: PolicyState, config: Config) -> tuple[Plan, PolicyState]:
    now_s = snapshot.taken_at_s
    state = _after_a_clock_step(state, now_s)  # 1: sanitize (the clock)
    guests = _managed(snapshot, state, config)  # 1, 2: sanitize, bands
    budget_kib = _budget_kib(snapshot, guests, config)  # 3
    plan = _Allocation(guests, budget_kib, config)  # 4
    plan.clamp()
    shortfall_kib = 0
    pressured = _under_pressure(snapshot, config)
    # Relief answers memory the host lacks now (below its guard, or what a starting VM needs, or pressure), not
    # grants the guard holds: those may never be touched, and lending spends them on purpose.
    deficit_kib = max(0, -(budget_kib + sum(g.held_kib for g in guests)))
    if deficit_kib or pressured:
        # From above high, then above low (those that did not give when last asked after everyone else); what
        # QEMU is already giving back counts first.
        need_kib = deficit_kib + RELIEF_MARGIN_KIB
        need_kib -= sum(_backed_above_kib(g, g.base_kib, config) for g in guests if g.base_kib < g.dom.current_kib)
        for who in ("others", "balkers"):
            need_kib = plan.give(plan.give(need_kib, Rule.RELIEF, "high", who=who), Rule.RELIEF, "low", who=who)
        shortfall_kib = max(0, need_kib - RELIEF_MARGIN_KIB)
        plan.keep_kib = RELIEF_MARGIN_KIB
        pressure = ", under memory pressure: only loans grow" if pressured else ""
        plan.notes.append(f"host {kib_to_mib(deficit_kib):.0f} MiB short of its guard{pressure}: relief")
    if not pressured:
        target_kib = mib_to_kib(config.host.target_available_mib)
        starving = any(g.guest_class is GuestClass.STARVING for g in guests)
        plan.reclaim(not target_kib or snapshot.host.available_kib < target_kib or starving)
        for aim, giver, lift in FOR_THE_STARVING:
            if not (unmet := plan.unmet_kib(aim)):
                continue
            if giver is not None:  # starving guests never give: what they lack is as it was
                plan.give(sum(unmet.values()), giver.rule, giver.line, giver.cache_only)
            if lift == "budget":
                plan.fill(unmet, Rule.NEED, plan.budget_kib)
            elif lift == "lent":
                plan.fill(unmet, Rule.LENT, plan.lendable_kib(), beyond_budget=True)
            elif lift == "room":
                plan.lend_room(unmet)
        plan.tax()
        pool_kib = plan.reclaimed_kib - sum(max(0, g.target_kib - g.base_kib) for g in guests)
        busy = {
            g.name: g.band.high_kib - g.target_kib
            for g in guests
            if g.guest_class is GuestClass.BUSY and g.settled and g.name not in state.lowered_at_s and g.rule is None
        }
        plan.fill(busy, Rule.POOL, pool_kib)
    else:  # under pressure only what a guest lacks to last is lent, from the host's room (PSI can be high with
        # GiBs above the guard: the host's own I/O refaulting, a cgroup at its limit)
        plan.lend_room(plan.unmet_kib("survive"))
    out = Plan(
        plan.changes(),  # 5
        {g.name: g.guest_class for g in guests},
        plan.budget_kib,
        tuple(plan.notes),
        host_deficit_kib=max(0, mib_to_kib(config.host.min_available_mib) - snapshot.host.available_kib),
        relief_shortfall_kib=shortfall_kib,
        bands={g.name: g.band for g in guests},
        refused={g.name: g.refused for g in guests if g.refused},
        unmet_kib=plan.unmet_kib("grow"),
        balking=frozenset(g.name for g in guests if g.balks),
    )
    return out, _next_state(guests, state, now_s, config)


def _next_state(guests: list[_Guest], state: PolicyState, now_s: float, config: Config) -> PolicyState:
    """What the next tick needs: samples, pending targets, recent lowerings and raises, grants still held.

    A grant is dropped once QEMU backs it (the guard holds nothing for it), once the bound has passed, and once
    the guest is steady on a new sample past the first seconds after it was raised: it is not growing into it,
    and if it does later, relief answers."""
    recent_s = config.stale_after_s
    granted_kib = {}
    for g in guests:
        grant_kib = min(state.granted_kib.get(g.name, 0), g.held_kib)
        raised_at_s = state.raised_at_s.get(g.name)
        steady_again = g.new_sample and g.sample is not None and g.sample.steady
        if steady_again and (raised_at_s is None or now_s - raised_at_s > recent_s):
            grant_kib = 0
        if grant_kib > 0:
            granted_kib[g.name] = grant_kib
    names = {g.name for g in guests}
    silence_s = silence_limit_s(config)
    return PolicyState(
        samples={g.name: g.sample for g in guests if g.sample is not None},
        pending={g.name: g.pending for g in guests if g.pending is not None},
        lowered_at_s={n: t for n, t in state.lowered_at_s.items() if n in names and now_s - t <= recent_s},
        granted_kib=granted_kib,
        raised_at_s={n: t for n, t in state.raised_at_s.items() if n in names and now_s - t <= silence_s},
        no_progress_at_s={g.name: g.no_progress_at_s for g in guests if g.no_progress_at_s is not None},
        # A refusal is forgotten once the stale time passes without another.
        refusals={n: r for n, r in state.refusals.items() if n in names and now_s - r[0] <= recent_s},
        at_s=now_s,
    )
