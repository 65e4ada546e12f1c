"""memcoord's balloon policy as one pure function: snapshot + state + config -> plan + next state.

No I/O, no clock, no logging: the same inputs always give the same plan, whatever order the domains are
listed in. `decide` reads top to bottom as the algorithm, one named function per step:

1. `_look_at` every managed guest: fold its new stats sample into its history (free memory, ramp), size its
   thresholds, and `_classify` it: starving (or about to be, at its ramp), wasteful, idle, busy; no-stats and
   stale guests are left alone, except a late guest whose last figures were ramping toward starvation;
2. `_clamp_to_bounds`: a guest below its floor is raised, one above its ceiling comes down a step at a time;
3. `_relieve_host`: when the host is below its guard, take memory back from the guests holding the most
   reclaimable memory above their buffer (never a starving guest, never below a floor, bounded per tick);
4. `_reclaim_wasteful`: each wasteful idle guest gives back up to a reclaim step into the pool, down to its
   wasteful line (in the production profile, only while the host is below its comfort target or a guest
   starves);
5. `_grow_starving`: each starving guest grows by what its ramp will use until memcoord can look again (at
   least a grow step), a scarce headroom shared per head with busy guests about to starve (each capped by what
   it will lack) and levelled among the starving; `_take_for_the_starving`: what the headroom could not give,
   guests holding far more than they need give back (grants never touched come back at once:
   `_grow_from_returned_grants`); `_grow_to_survive`: a guest
   that would run out of memory before memcoord can act again is lent what the guard holds back for guests that
   will not starve soon, never the guard itself; `_share_pool_with_busy`: busy guests share what is left of the
   pool, each as far as it can use it;
6. `_collect_idle_tax`: if a starving guest grew, each idle guest pays the idle tax, which goes to them.

Nobody grows while the host is below its guard (but to a floor).

Every growth goes through the host guard (`_Ledger`): headroom = host available - host.min_available_mib -
memory memcoord granted that its guest has not touched yet - the never-backed free memory a starving guest, or a
ramping one before memcoord can look again, will touch. Idle guests' own untouched memory is not reserved: if
they touch it and the host drops below its guard, step 3 answers.

Free memory is `balloon.usable` (MemAvailable: free + reclaimable page cache) where the guest reports it, else
`balloon.unused` (MemFree), so a guest full of page cache is not taken for a starving one.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from memcoord.core.model import (
    KIB_PER_MIB,
    LOWERING_ACTIONS,
    Action,
    Change,
    DomainStats,
    GuestClass,
    Plan,
    Snapshot,
    kib_to_mib,
    mib_to_kib,
)

if TYPE_CHECKING:
    from memcoord.core.config import Config, GuestConfig

# Stats that move less than this between two guest samples count as unchanged: smaller moves are noise, not a
# guest starting to work.
STEADY_TOLERANCE_KIB = KIB_PER_MIB
# A balloon within this of the target memcoord set has arrived (QEMU stops a few pages short at times).
SETTLED_TOLERANCE_KIB = 4 * KIB_PER_MIB
# How long a balloon takes to move a few hundred MiB once setMemory is called (about a second on real QEMU).
BALLOON_MOVE_S = 1.0
# Growth covers this many times what the ramp uses before memcoord looks again: a ramp may steepen, and a
# busy guest's next stats may come late. Memory granted and not used is reclaimed later; an OOM kill is not.
RAMP_SAFETY = 2.0
# A ramp seen once is remembered, halving with each later sample that does not repeat it: one quiet sample
# in the middle of a burst does not make the guest look idle.
RAMP_DECAY = 0.5
# A busy guest that starves within this at its ramp competes for a scarce headroom with the starving.
CONTENDER_HORIZON_S = 10.0
# A guest whose stats stopped coming while it ramped toward starving is grown on its projection for at most
# this many stale-stats periods; after that it is left alone like any guest without stats.
LATE_GROWTH_LIMIT_STALE_PERIODS = 3
# After memcoord lowers a guest, its balloon's move and the guest's next report: figures older than this past
# the lowering may predate the balloon's arrival.
SETTLE_S = 2.0
# The reason a growth names when it was lent memory the guard held back for others (`_grow_to_survive`): such a
# growth is bounded by host available - min_available_mib alone, not also by others' untouched grants.
LENT_REASON = "would run out before memcoord can act again: lent memory held back for others"
# Relief aims this far above the guard, so that the host does not hover on the line.
RELIEF_MARGIN_KIB = 64 * KIB_PER_MIB


@dataclass(frozen=True, slots=True)
class Sample:
    """The last guest stats sample the policy saw for a domain, folded into its history."""

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


@dataclass(frozen=True, slots=True)
class Pending:
    """A target memcoord set that the balloon has not reached yet, and when it was set."""

    target_kib: int
    set_at_s: float


@dataclass(frozen=True, slots=True)
class PolicyState:
    samples: dict[str, Sample] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    # When memcoord last lowered each guest: its next samples may look busy from the balloon's own move.
    lowered_at_s: dict[str, float] = field(default_factory=dict)
    # Memory memcoord granted each guest that the guest has not touched yet: the host guard keeps it.
    granted_kib: dict[str, int] = field(default_factory=dict)
    # When memcoord last raised each guest: its free memory is the grant until it uses it, not waste.
    raised_at_s: dict[str, float] = field(default_factory=dict)


def applied(state: PolicyState, changes: Iterable[Change], now_s: float) -> PolicyState:
    """Record the targets the shell really set, so the next ticks wait for those balloons to get there and
    the host guard keeps what was granted.

    balloon.current is where the balloon is, not where it is going: deciding again from it while it moves
    would grow a guest twice for one need, and the host guard would count less than was granted.
    """
    changes = list(changes)
    pending = {**state.pending, **{c.domain: Pending(c.to_kib, now_s) for c in changes}}
    lowered_at_s = {**state.lowered_at_s, **{c.domain: now_s for c in changes if _lowers(c)}}
    raised_at_s = {**state.raised_at_s, **{c.domain: now_s for c in changes if not _lowers(c)}}
    granted_kib = dict(state.granted_kib)
    for c in changes:
        # Lowering takes the untouched grant first (the balloon takes free pages).
        granted_kib[c.domain] = max(0, granted_kib.get(c.domain, 0) + c.delta_kib)
    granted_kib = {n: g for n, g in granted_kib.items() if g}
    return PolicyState(state.samples, pending, lowered_at_s, granted_kib, raised_at_s)


def _lowers(change: Change) -> bool:
    return change.action in LOWERING_ACTIONS or change.delta_kib < 0


# -- step 1: look at each guest ---------------------------------------------------------------------------
def free_figure(dom: DomainStats) -> tuple[int | None, str]:
    """The guest's free memory as the policy counts it, and the name of the balloon stat it came from."""
    if dom.usable_kib is not None:
        return dom.usable_kib, "usable"
    return dom.unused_kib, "unused"


def _used_kib(dom: DomainStats, free_kib: int) -> int:
    """What the guest's programs hold: its own total at its balloon size (`DomainStats.own_total_kib`) less free.

    MemTotal comes in the same guest report as the free figure; balloon.current may have moved since.
    """
    total_kib = dom.own_total_kib
    return (total_kib if total_kib is not None else dom.current_kib) - free_kib


def _observe(prev: Sample | None, dom: DomainStats, peak_hold_s: float, heading: bool = False) -> Sample | None:
    """Fold a new stats sample into the domain's history; a sample with the same timestamp is not new.

    A guest is steady when its free memory did not change, or when it changed exactly as much as the balloon
    moved (its used memory did not change): that is memcoord's own doing, not the guest being busy. Its ramp
    is its used memory's growth per second between samples, over the time between them: a guest whose stats
    come late because it is busy shows its ramp all the same. Its peak is the most its programs used within
    the last peak_hold_s. heading: the balloon is on its way to a target memcoord set.
    """
    free_kib, figure = free_figure(dom)
    if free_kib is None or not dom.last_update_s:
        return prev
    if prev is not None and dom.last_update_s <= prev.last_update_s:
        return prev
    used_kib = _used_kib(dom, free_kib)
    by_total = dom.available_kib is not None
    if prev is None or prev.figure != figure or prev.used_by_total != by_total:
        return Sample(
            dom.last_update_s,
            free_kib,
            dom.current_kib,
            False,
            used_kib,
            by_total,
            0.0,
            figure,
            used_kib,
            dom.last_update_s,
        )
    used_grew_kib = used_kib - prev.used_kib
    steady = min(abs(free_kib - prev.free_kib), abs(used_grew_kib)) < STEADY_TOLERANCE_KIB
    # Without the guest's own total, a balloon move between two reports reads as use: no new ramp from it.
    moved = abs(dom.current_kib - prev.current_kib) > SETTLED_TOLERANCE_KIB
    # A deflate-on-OOM guest's total is taken at balloon.current, which libvirt updates about a second after
    # the guest's own report already counts the move: while its balloon moves, the move reads as use too.
    total_lags = dom.settings is not None and dom.settings.deflate_on_oom and (moved or heading)
    interval_s = dom.last_update_s - prev.last_update_s
    reads_use = (by_total or not moved) and not total_lags
    rate_kib_per_s = used_grew_kib / interval_s if reads_use else 0.0
    ramp_kib_per_s = max(rate_kib_per_s, prev.ramp_kib_per_s * RAMP_DECAY, 0.0)
    if ramp_kib_per_s * interval_s < STEADY_TOLERANCE_KIB:
        ramp_kib_per_s = 0.0
    peak_used_kib, peak_at_s = prev.peak_used_kib, prev.peak_at_s
    if used_kib >= peak_used_kib or dom.last_update_s - peak_at_s > peak_hold_s:
        peak_used_kib, peak_at_s = used_kib, dom.last_update_s
    return Sample(
        dom.last_update_s,
        free_kib,
        dom.current_kib,
        steady,
        used_kib,
        by_total,
        ramp_kib_per_s,
        figure,
        peak_used_kib,
        peak_at_s,
    )


@dataclass(slots=True)
class _Guest:
    """One managed guest as this tick sees it; sizes at `base_kib`, the target its balloon is heading to.

    Built and filled in by `_look_at` only (mutable for speed: it is made for every guest on every tick)."""

    dom: DomainStats
    sample: Sample | None
    new_sample: bool
    pending: Pending | None
    base_kib: int
    floor_kib: int
    ceiling_kib: int
    starving_kib: int
    wasteful_kib: int
    grow_step_kib: int
    grant_kib: int
    lowered_at_s: float | None = None
    free_kib: int | None = None
    # MemFree at base_kib: pages the guest never touched, or touched and freed. What the host may still lose to
    # the guest is among these (page cache, counted free in free_kib, is already backed).
    unused_kib: int | None = None  # at base_kib, corrected for balloon moves since the sample
    age_s: float = 0.0
    guest_class: GuestClass = GuestClass.NO_STATS
    why: str = ""
    # Copied from dom and sample once: read for every guest many times a tick.
    name: str = ""
    ramp_kib_per_s: float = 0.0

    def __post_init__(self) -> None:
        self.name = self.dom.name
        self.ramp_kib_per_s = self.sample.ramp_kib_per_s if self.sample else 0.0

    @property
    def figure(self) -> str:
        return self.sample.figure if self.sample else "unused"

    def projected_free_kib(self, ahead_s: float) -> int:
        """Free memory ahead_s from now at the guest's ramp (the sample is already age_s old)."""
        return int((self.free_kib or 0) - self.ramp_kib_per_s * (self.age_s + ahead_s))

    def buffer_kib(self, lookahead_s: float) -> int:
        """Free memory relief leaves a guest: twice its starving line, or what its ramp needs if more."""
        return max(2 * self.starving_kib, self.starving_kib + int(RAMP_SAFETY * self.ramp_kib_per_s * lookahead_s))


def lookahead_s(config: Config) -> float:
    """How long until memcoord can act on a guest again: its next stats, the next tick, the balloon's move."""
    return config.loop.stats_period_s + config.loop.interval_s + BALLOON_MOVE_S


def thresholds_kib(config: Config, size_kib: int) -> tuple[int, int, int]:
    """(starving, wasteful, grow step) for a guest of size_kib: each max(MiB, % of the guest).

    The wasteful line stays at least wasteful_mib - starving_mib above the starving line, whatever the
    percentages, so that one reclaim step (config checks it is smaller) never makes a guest starve.
    """
    return _thresholds_kib(config.guest, size_kib)


@functools.lru_cache(maxsize=4096)  # a host has a few guest sizes, asked for by every guest on every tick
def _thresholds_kib(g: GuestConfig, size_kib: int) -> tuple[int, int, int]:
    starving_kib = max(mib_to_kib(g.starving_mib), int(size_kib * g.starving_pct / 100))
    wasteful_kib = max(
        mib_to_kib(g.wasteful_mib),
        int(size_kib * g.wasteful_pct / 100),
        starving_kib + mib_to_kib(g.wasteful_mib - g.starving_mib),
    )
    grow_step_kib = max(mib_to_kib(g.grow_step_mib), int(size_kib * g.grow_step_pct / 100))
    return starving_kib, wasteful_kib, grow_step_kib


def _still_pending(pending: Pending | None, dom: DomainStats, config: Config, now_s: float) -> Pending | None:
    """The pending target while the balloon is on its way; None once it arrived or gave up.

    A balloon that cannot reach its target (a guest that will not give pages up) is believed where it is
    after the stale-stats time.
    """
    if pending is None or abs(dom.current_kib - pending.target_kib) <= SETTLED_TOLERANCE_KIB:
        return None
    return pending if now_s - pending.set_at_s <= config.stale_after_s else None


def _look_at(dom: DomainStats, state: PolicyState, config: Config, now_s: float) -> _Guest:
    prev = state.samples.get(dom.name)
    pending = _still_pending(state.pending.get(dom.name), dom, config, now_s)
    sample = _observe(prev, dom, config.guest.peak_hold_s, heading=pending is not None)
    base_kib = pending.target_kib if pending else dom.current_kib
    ceiling_kib = config.ceiling_kib(dom.name, dom.max_kib, dom.settings)
    # Sized on the guest's configured size, not where the balloon has it now: a guest shrunk to what it uses
    # keeps a buffer in proportion to what it may need again.
    starving_kib, wasteful_kib, grow_step_kib = thresholds_kib(config, ceiling_kib)
    guest = _Guest(
        dom=dom,
        sample=sample,
        new_sample=sample is not None and sample is not prev,
        pending=pending,
        base_kib=base_kib,
        # A floor above the ceiling yields to it.
        floor_kib=min(config.floor_kib(dom.name, dom.settings), ceiling_kib),
        ceiling_kib=ceiling_kib,
        starving_kib=starving_kib,
        wasteful_kib=wasteful_kib,
        grow_step_kib=grow_step_kib,
        grant_kib=state.granted_kib.get(dom.name, 0),
        lowered_at_s=state.lowered_at_s.get(dom.name),
    )
    if sample is None:
        return guest
    # The sample saw the balloon at sample.current_kib; memory the balloon moved since is free (or gone) too.
    guest.free_kib = sample.free_kib + (base_kib - sample.current_kib)
    moved_kib = base_kib - sample.current_kib
    guest.unused_kib = guest.free_kib if dom.unused_kib is None else dom.unused_kib + moved_kib
    guest.age_s = max(0.0, now_s - (dom.last_update_s or sample.last_update_s))
    guest.guest_class, guest.why = _classify(guest, config)
    return guest


def _classify(g: _Guest, config: Config) -> tuple[GuestClass, str]:
    """The guest's class and, for a starving guest, why (naming the balloon stat the figure came from)."""
    ahead_s = lookahead_s(config)
    free_kib = g.free_kib or 0
    ramp_mib_per_s = kib_to_mib(int(g.ramp_kib_per_s))
    line = f"{kib_to_mib(g.starving_kib):.0f} MiB"
    if g.age_s > config.stale_after_s:
        late_limit_s = LATE_GROWTH_LIMIT_STALE_PERIODS * config.stale_after_s
        if g.ramp_kib_per_s and g.age_s <= late_limit_s and g.projected_free_kib(ahead_s) <= g.starving_kib:
            return GuestClass.STARVING, (
                f"stats {g.age_s:.0f} s late while ramping {ramp_mib_per_s:.0f} MiB/s: about "
                f"{kib_to_mib(max(0, g.projected_free_kib(0))):.0f} MiB {g.figure} by now"
            )
        return GuestClass.STALE, ""
    if free_kib <= g.starving_kib:
        return GuestClass.STARVING, f"starving: {kib_to_mib(free_kib):.0f} MiB {g.figure} <= {line}"
    if g.ramp_kib_per_s and g.projected_free_kib(ahead_s) <= g.starving_kib:
        return GuestClass.STARVING, (
            f"ramping {ramp_mib_per_s:.0f} MiB/s: {kib_to_mib(free_kib):.0f} MiB {g.figure} reaches {line} "
            f"before memcoord can look again"
        )
    if not g.sample or not g.sample.steady:
        return GuestClass.BUSY, ""
    if free_kib >= g.wasteful_kib:
        return GuestClass.WASTEFUL, ""
    return GuestClass.IDLE, ""


# -- the host guard ------------------------------------------------------------------------------------------
class _Ledger:
    """Targets being planned, and the host headroom they leave.

    headroom = host available - host.min_available_mib - what the guests may still take as the guard counts
    it (`draw_kib`): growth planned this tick, memory granted earlier that the guest has not touched, and the
    never-backed free memory a starving or ramping guest will touch before memcoord can look again. Idle
    guests' untouched memory is not counted: on a host of large idle guests that would leave nothing to grow
    with.
    Lowering a guest gives no host memory in the same tick: what QEMU releases reaches host available once the
    balloon has inflated, and a guest grown from it meanwhile could touch it first (nothing comes back at all
    from memory QEMU never backed). What it does at once is end what the guard held back for that guest's
    untouched grant or ramp: that much headroom is back in this tick.
    """

    def __init__(
        self, host_available_kib: int, guests: list[_Guest], config: Config, still_growing: Collection[str] = ()
    ) -> None:
        self.guests = {g.name: g for g in guests}
        self.target_kib = {g.name: g.base_kib for g in guests}
        self.actions: dict[str, tuple[Action, list[str]]] = {}
        self.notes: list[str] = []
        self.overhead_kib = mib_to_kib(config.host.guest_overhead_mib)
        self.lookahead_s = lookahead_s(config)
        self.guard_kib = mib_to_kib(config.host.min_available_mib)
        self.deficit_kib = max(0, self.guard_kib - host_available_kib)
        # What each guest draws at its planned target, kept up to date by `_move`.
        self.drawn_kib = {g.name: self.draw_kib(g, g.base_kib) for g in guests}
        self.headroom_kib = host_available_kib - self.guard_kib - sum(self.drawn_kib.values())
        # Held back for guests that will not starve soon, with trusted stats, not still growing into a grant
        # memcoord just gave: what may be lent to a guest that would otherwise run out of memory before memcoord
        # can act again (`_grow_to_survive`). Of a ramping lender, only what is held back beyond its measured
        # ramp over that time (the safety margin) is lent: the ramp itself is sure to come.
        self.lenders = {
            g.name
            for g in guests
            if not _needs_memory_soon(g)
            and g.guest_class not in (GuestClass.STALE, GuestClass.NO_STATS)
            and g.name not in still_growing
        }
        self.lendable_kib = sum(self._lendable_share_kib(self.guests[n]) for n in self.lenders)

    def _lendable_share_kib(self, g: _Guest) -> int:
        ramp_kib = int(g.ramp_kib_per_s * (g.age_s + self.lookahead_s))
        return max(0, self.drawn_kib[g.name] - ramp_kib)

    def backed_above_kib(self, g: _Guest, target_kib: int) -> int:
        """Memory QEMU backs for this guest beyond target_kib (plus its overhead): what it must give back."""
        if g.dom.rss_kib is None:
            return 0
        return max(0, g.dom.rss_kib - self.overhead_kib - target_kib)

    def draw_kib(self, g: _Guest, target_kib: int) -> int:
        """Host memory the guest may still take at target_kib, as the guard counts it: growth beyond the
        target its balloon is heading to, and, of what QEMU does not back yet, earlier grants and what a
        ramping guest will touch of its free memory before memcoord can look again, twice over.

        A ramping guest's whole free memory is not held back: a host of slowly ramping guests with large
        balloons would then have no headroom left for one that starves now. What a ramp touches beyond the
        horizon, memcoord sees on the next ticks and counts then (and relief answers if the host dips below its
        guard)."""
        grown_kib = max(0, target_kib - g.base_kib)
        kept_kib = min(target_kib, g.base_kib)
        unbacked_kib = kept_kib if g.dom.rss_kib is None else max(0, kept_kib + self.overhead_kib - g.dom.rss_kib)
        # Lowering takes the untouched grant first (as `applied` counts it): the balloon takes free pages.
        grant_kib = max(0, g.grant_kib - (g.base_kib - kept_kib))
        if g.unused_kib is None:
            return grown_kib + min(grant_kib, unbacked_kib)
        # Memory memcoord granted and the guest has not touched is kept for it, wherever it is in its free
        # memory. Of the rest, a starving guest takes all its free pages (MemFree, down to the kernel's reserves,
        # which MemAvailable leaves out), a ramping one what its ramp touches before memcoord can act again.
        # (QEMU's overhead is a guess; the guest's own figure bounds it.)
        promised_kib = min(grant_kib, g.unused_kib)
        if g.guest_class is GuestClass.STARVING:
            promised_kib = g.unused_kib
        elif g.ramp_kib_per_s > 0:
            touched_kib = int(RAMP_SAFETY * g.ramp_kib_per_s * (g.age_s + self.lookahead_s))
            promised_kib = min(g.unused_kib, max(grant_kib, touched_kib))
        return grown_kib + min(max(0, promised_kib), unbacked_kib)

    def _move(self, name: str, new_kib: int, action: Action, reason: str) -> None:
        now_kib = self.draw_kib(self.guests[name], new_kib)
        drawn_kib = now_kib - self.drawn_kib[name]
        self.drawn_kib[name] = now_kib
        self.headroom_kib -= drawn_kib
        if name in self.lenders and drawn_kib < 0:
            # What a lender no longer holds back is in the headroom now, not lendable. (Growth planned for a
            # lender is a commitment, never lendable.)
            self.lendable_kib = max(0, self.lendable_kib + drawn_kib)
        self.target_kib[name] = new_kib
        if name in self.actions:
            self.actions[name][1].append(reason)
        else:
            self.actions[name] = (action, [reason])

    def room_kib(self, name: str) -> int:
        return self.guests[name].ceiling_kib - self.target_kib[name]

    def take(self, name: str, want_kib: int, action: Action, reason: str) -> int:
        """Lower a target by up to want_kib, never below the floor; returns what was taken."""
        got_kib = _whole_mib(min(want_kib, self.target_kib[name] - self.guests[name].floor_kib))
        if got_kib <= 0:
            return 0
        self._move(name, self.target_kib[name] - got_kib, action, reason)
        return got_kib

    def give(
        self,
        name: str,
        want_kib: int,
        action: Action,
        reason: str,
        share_kib: int | None = None,
        lend: bool = False,
    ) -> int:
        """Raise a target by up to want_kib, never above the ceiling nor past the host guard (nor past its
        share_kib of a headroom too small for everyone). With lend, also from what is held back for guests
        that are not starving (never from the guard itself)."""
        want_kib = min(want_kib, self.room_kib(name))
        headroom_kib = self.headroom_kib + (self.lendable_kib if lend else 0)
        allowed_kib = max(0, headroom_kib) if share_kib is None else min(max(0, headroom_kib), share_kib)
        got_kib = _whole_mib(min(want_kib, allowed_kib))
        if got_kib < want_kib:
            self.notes.append(
                f"host guard: {name} wanted {kib_to_mib(want_kib):.0f} MiB, got {kib_to_mib(max(got_kib, 0)):.0f} MiB"
            )
        if got_kib <= 0:
            return 0
        self._move(name, self.target_kib[name] + got_kib, action, reason)
        return got_kib

    def lowered(self, name: str) -> bool:
        return self.target_kib[name] < self.guests[name].base_kib

    def changes(self) -> tuple[Change, ...]:
        out = []
        for name in sorted(self.actions):
            action, reasons = self.actions[name]
            before_kib, after_kib = self.guests[name].base_kib, self.target_kib[name]
            if before_kib != after_kib:
                out.append(Change(name, action, before_kib, after_kib, "; ".join(reasons)))
        return tuple(out)


def _needs_memory_soon(g: _Guest) -> bool:
    """Starving, or busy and starving within CONTENDER_HORIZON_S at its ramp."""
    return g.guest_class is GuestClass.STARVING or (
        g.guest_class is GuestClass.BUSY and g.projected_free_kib(CONTENDER_HORIZON_S) <= g.starving_kib
    )


def _whole_mib(kib: int) -> int:
    return kib - kib % KIB_PER_MIB


def host_headroom_kib(snapshot: Snapshot, config: Config, state: PolicyState | None = None) -> int:
    """What the host guard lets memcoord hand out now (before any plan): host available -
    host.min_available_mib - memory granted and not yet touched. Negative when the host is below its guard."""
    state = state or PolicyState()
    guests = [
        _look_at(d, state, config, snapshot.taken_at_s) for d in snapshot.domains if config.manages(d.name, d.settings)
    ]
    return _Ledger(snapshot.host.available_kib, guests, config).headroom_kib


# -- steps 2-6 ---------------------------------------------------------------------------------------------
def _settled(g: _Guest) -> bool:
    """Trusted figures and a balloon at rest, seen by a sample the guest reported after its last lowering had
    landed: only such a guest may be lowered. (A balloon that arrived since the last tick may have been
    half-way when the guest wrote its figures: lowering again on them would take a step too many.)"""
    if g.pending is not None or g.guest_class in (GuestClass.NO_STATS, GuestClass.STALE):
        return False
    return g.lowered_at_s is None or (g.sample is not None and g.sample.last_update_s >= g.lowered_at_s + SETTLE_S)


def _clamp_to_bounds(guests: list[_Guest], ledger: _Ledger, config: Config) -> set[str]:
    """Below the floor is raised (safe without stats); above the ceiling comes down one step at a time, but
    never past its buffer (as relief leaves it): a ceiling lowered under what the guest's programs use waits
    until they free it, rather than have them OOM-killed."""
    clamped: set[str] = set()
    step_kib = mib_to_kib(config.guest.reclaim_step_mib)
    ahead_s = lookahead_s(config)
    for g in guests:
        if g.pending is None and g.base_kib < g.floor_kib:
            ledger.give(g.name, g.floor_kib - g.base_kib, Action.CLAMP, "below its floor")
            clamped.add(g.name)
        elif _settled(g) and g.base_kib > g.ceiling_kib and g.guest_class is not GuestClass.STARVING:
            spare_kib = max(0, (g.free_kib or 0) - g.buffer_kib(ahead_s))
            over_kib = g.base_kib - g.ceiling_kib
            if spare_kib < over_kib:
                ledger.notes.append(
                    f"{g.name}: {kib_to_mib(over_kib):.0f} MiB above its max_mib, {kib_to_mib(spare_kib):.0f} MiB "
                    "of it free to take now: the rest waits until its programs free it"
                )
            if ledger.take(g.name, min(over_kib, step_kib, spare_kib), Action.CLAMP, "above its max_mib"):
                clamped.add(g.name)
    return clamped


def _relieve_host(guests: list[_Guest], ledger: _Ledger, config: Config, skip: set[str]) -> int:
    """Below the guard, take memory back until the host is above it again; returns the shortfall.

    Memory on its way back (balloons still inflating to an earlier target) counts first. Then the guests
    with the most reclaimable memory above their buffer give up to relief_step_mib each, in that order,
    until what QEMU must release covers the deficit. Never a starving guest, never below a floor, never a
    guest without trusted stats. A guest whose free memory QEMU never backed gives the host nothing; its
    reclaim is not counted toward the deficit.
    """
    if not ledger.deficit_kib:
        return 0
    ahead_s = lookahead_s(config)
    on_way_kib = sum(ledger.backed_above_kib(g, g.base_kib) for g in guests if g.pending)
    need_kib = ledger.deficit_kib + RELIEF_MARGIN_KIB - on_way_kib
    step_kib = mib_to_kib(config.host.relief_step_mib)
    candidates = [
        g
        for g in guests
        if _settled(g)
        and g.name not in skip
        and g.guest_class is not GuestClass.STARVING
        and (g.free_kib or 0) > g.buffer_kib(ahead_s)
    ]
    candidates.sort(key=lambda g: (-((g.free_kib or 0) - g.buffer_kib(ahead_s)), g.name))
    guard_mib = config.host.min_available_mib
    available_mib = kib_to_mib(guard_mib * KIB_PER_MIB - ledger.deficit_kib)
    for g in candidates:
        if need_kib <= 0:
            break
        spare_kib = (g.free_kib or 0) - g.buffer_kib(ahead_s)
        released_before_kib = ledger.backed_above_kib(g, ledger.target_kib[g.name])
        ledger.take(
            g.name,
            min(step_kib, spare_kib),
            Action.RELIEVE,
            f"host available {available_mib:.0f} MiB < guard {guard_mib} MiB: {kib_to_mib(g.free_kib or 0):.0f} "
            f"MiB {g.figure}, {kib_to_mib(g.buffer_kib(ahead_s)):.0f} MiB kept",
        )
        need_kib -= ledger.backed_above_kib(g, ledger.target_kib[g.name]) - released_before_kib
    return max(0, need_kib - RELIEF_MARGIN_KIB)


def _reclaim_allowed(guests: list[_Guest], host_available_kib: int, config: Config) -> bool:
    """Default profile: always. Production profile (host.target_available_mib): only while the host is
    below its comfort target or a guest is starving."""
    target_mib = config.host.target_available_mib
    if not target_mib or host_available_kib < mib_to_kib(target_mib):
        return True
    return any(g.guest_class is GuestClass.STARVING for g in guests)


def peak_floor_kib(g: _Guest, config: Config) -> int:
    """Idle reclaim stops where the guest's recent peak would just reach its starving line again: a guest
    that burst once in the last peak_hold_s keeps room for the next burst instead of being regrown into it."""
    if not g.sample or not config.guest.peak_hold_s:
        return 0
    # Used memory is counted against the guest's own total; the balloon's size also holds what the kernel
    # keeps for itself (balloon.current - MemTotal).
    total_kib = g.dom.own_total_kib
    kernel_kib = g.dom.current_kib - total_kib if total_kib is not None else 0
    return g.sample.peak_used_kib + kernel_kib + g.starving_kib


def _reclaim_wasteful(guests: list[_Guest], ledger: _Ledger, config: Config, skip: set[str]) -> int:
    """One reclaim step from each wasteful idle guest seen on a new sample, never past its wasteful line (the
    buffer a burst has until memcoord can react) nor below its recent peak (`peak_floor_kib`); returns the
    pool."""
    pool_kib = 0
    step_kib = mib_to_kib(config.guest.reclaim_step_mib)
    for g in guests:
        # An old sample predates memcoord's last reclaim: never reclaim twice on one set of figures.
        if g.guest_class is GuestClass.WASTEFUL and g.new_sample and _settled(g) and g.name not in skip:
            pool_kib += ledger.take(
                g.name,
                min(
                    step_kib, (g.free_kib or 0) - g.wasteful_kib, ledger.target_kib[g.name] - peak_floor_kib(g, config)
                ),
                Action.RECLAIM,
                f"idle with {kib_to_mib(g.free_kib or 0):.0f} MiB {g.figure} >= wasteful "
                f"{kib_to_mib(g.wasteful_kib):.0f} MiB",
            )
    return pool_kib


def grow_want_kib(g: _Guest, config: Config) -> int:
    """What a starving guest should get: enough to stay above its starving line, with its ramp, until
    memcoord can look again (twice over), and never less than a grow step."""
    horizon_s = g.age_s + lookahead_s(config)
    need_kib = g.starving_kib - (g.free_kib or 0) + int(RAMP_SAFETY * g.ramp_kib_per_s * horizon_s)
    return max(g.grow_step_kib, need_kib)


def _contends(g: _Guest, ledger: _Ledger) -> bool:
    """A busy guest with room to grow that starves within CONTENDER_HORIZON_S at its ramp."""
    return (
        g.guest_class is GuestClass.BUSY
        and ledger.room_kib(g.name) > 0
        and g.projected_free_kib(CONTENDER_HORIZON_S) <= g.starving_kib
    )


def contender_need(g: _Guest, ledger: _Ledger) -> int:
    """What a contender will lack within CONTENDER_HORIZON_S at its ramp (to stay at its starving line)."""
    return min(ledger.room_kib(g.name), max(0, g.starving_kib - g.projected_free_kib(CONTENDER_HORIZON_S)))


def _grow_starving(
    guests: list[_Guest], ledger: _Ledger, config: Config, skip: set[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Each starving guest grows by `grow_want_kib`. When the headroom cannot give everyone who needs memory
    soon what they want (the starving, and busy guests about to starve), each busy contender keeps a share per
    head in the headroom, but no more than it will lack (`contender_need`), for the tick in which it starves; the
    starving share the rest by `_level_shares_kib`.
    Returns what each grown guest got, and what each starving guest wanted but did not get."""
    # (In name order, as `decide` lists the guests: the plan does not depend on libvirt's order.)
    starving = [g for g in guests if g.guest_class is GuestClass.STARVING and g.name not in skip]
    want_kib = {g.name: max(0, min(grow_want_kib(g, config), ledger.room_kib(g.name))) for g in starving}
    contender_needs_kib = [contender_need(g, ledger) for g in guests if _contends(g, ledger)]
    share_kib: dict[str, int | None] = dict.fromkeys(want_kib)
    if starving and sum(want_kib.values()) + sum(contender_needs_kib) > ledger.headroom_kib:
        # Per head, so that equal guests ramping a tick apart grow alike (four equal hogs under a guard); capped
        # by need, so that fifty slow ramps a few MiB short in ten seconds do not leave a guest starving now a
        # fiftieth of the headroom.
        headroom_kib = max(0, ledger.headroom_kib)
        per_head_kib = headroom_kib // (len(starving) + len(contender_needs_kib))
        budget_kib = headroom_kib - sum(min(per_head_kib, need_kib) for need_kib in contender_needs_kib)
        # Levelled on free memory as the guests report it: a ramp measured over one second is too noisy to
        # rank guests by (it put one of four equal hogs 60 MiB ahead of the others, and it outlived them).
        share_kib.update(_level_shares_kib([(g.name, g.free_kib or 0, want_kib[g.name]) for g in starving], budget_kib))
    grown: dict[str, int] = {}
    unmet_kib: dict[str, int] = {}
    for g in starving:
        if want_kib[g.name] <= 0:
            continue
        got_kib = ledger.give(g.name, want_kib[g.name], Action.GROW, g.why, share_kib=share_kib[g.name])
        if got_kib < want_kib[g.name]:
            unmet_kib[g.name] = want_kib[g.name] - got_kib
        if got_kib:
            grown[g.name] = got_kib
    return grown, unmet_kib


def _level_shares_kib(needs: list[tuple[str, int, int]], budget_kib: int) -> dict[str, int]:
    """A scarce budget shared by levelling (water-filling): (name, free, want) each get up to what they want,
    the lowest free raised first, so that they end as even as the budget allows. Equal
    shares would keep whatever unevenness earlier ticks left (a guest a tick behind stays behind, its process
    dies first, and its memory then goes to the others); levelling lets it catch up."""

    def given_kib(level_kib: int) -> int:
        return sum(min(want, max(0, level_kib - free)) for _, free, want in needs)

    low_kib = min(free for _, free, _ in needs)
    high_kib = max(free + want for _, free, want in needs)
    while high_kib - low_kib > KIB_PER_MIB:
        mid_kib = (low_kib + high_kib) // 2
        if given_kib(mid_kib) <= budget_kib:
            low_kib = mid_kib
        else:
            high_kib = mid_kib
    shares_kib = {name: _whole_mib(min(want, max(0, low_kib - free))) for name, free, want in needs}
    # What the search and whole MiB left over goes a MiB at a time to the lowest level that still wants some.
    left_kib = budget_kib - sum(shares_kib.values())
    while left_kib >= KIB_PER_MIB:
        open_needs = [
            (free + shares_kib[name], name) for name, free, want in needs if want - shares_kib[name] >= KIB_PER_MIB
        ]
        if not open_needs:
            break
        shares_kib[min(open_needs)[1]] += KIB_PER_MIB
        left_kib -= KIB_PER_MIB
    return shares_kib


def _take_for_the_starving(
    guests: list[_Guest], ledger: _Ledger, config: Config, unmet_kib: int, skip: set[str]
) -> None:
    """What the headroom could not give the starving, guests holding more than their buffer give back: the
    busy too (a guest ramping slowly with 800 MiB free needs a fraction of it), most spare first, at most
    relief_step_mib each. Memory the donors had touched reaches the starving through the host on the next
    ticks; grants they never touched at once (`_grow_from_returned_grants`)."""
    if unmet_kib <= 0:
        return

    spare_kib = {
        g.name: min(
            (g.free_kib or 0) - max(g.wasteful_kib, g.buffer_kib(CONTENDER_HORIZON_S)),
            ledger.target_kib[g.name] - peak_floor_kib(g, config),
        )
        for g in guests
        if g.guest_class in (GuestClass.BUSY, GuestClass.IDLE, GuestClass.WASTEFUL)
        and _settled(g)
        and g.name not in skip
        and not ledger.lowered(g.name)
    }
    donors = sorted((g for g in guests if spare_kib.get(g.name, 0) > 0), key=lambda g: (-spare_kib[g.name], g.name))
    step_kib = mib_to_kib(config.host.relief_step_mib)
    for g in donors:
        if unmet_kib <= 0:
            break
        unmet_kib -= ledger.take(
            g.name,
            min(step_kib, spare_kib[g.name], unmet_kib),
            Action.RECLAIM,
            f"for starving guests the host cannot feed: {kib_to_mib(g.free_kib or 0):.0f} MiB {g.figure}, "
            f"{kib_to_mib((g.free_kib or 0) - spare_kib[g.name]):.0f} MiB kept",
        )


def busy_need_kib(g: _Guest) -> int:
    """What a busy guest can use of the pool: up to its wasteful line plus what its ramp takes in
    CONTENDER_HORIZON_S. More would sit free in it, held back from the host (a grant is kept by the guard), until
    it is idle and reclaimed again."""
    return max(0, g.wasteful_kib + int(g.ramp_kib_per_s * CONTENDER_HORIZON_S) - (g.free_kib or 0))


def _steady_again(g: _Guest) -> bool:
    """Idle or wasteful on a sample new this tick: its use stopped moving."""
    return g.new_sample and g.guest_class in (GuestClass.IDLE, GuestClass.WASTEFUL)


def _grow_from_returned_grants(
    guests: list[_Guest], ledger: _Ledger, unmet_kib: dict[str, int], grown: dict[str, int], returned_kib: int
) -> None:
    """Grants the donors never touched were only held back by the guard, not backed by QEMU: taking them back
    is headroom now (returned_kib), and it goes to the starving in this tick, the least free first. (The rest
    of the headroom stays where `_grow_starving` left it: kept for busy guests about to starve.)"""
    for g in sorted((g for g in guests if g.name in unmet_kib), key=lambda g: (g.free_kib or 0, g.name)):
        if returned_kib < KIB_PER_MIB:
            break
        got_kib = ledger.give(g.name, min(unmet_kib[g.name], returned_kib), Action.GROW, "grants others did not use")
        returned_kib -= got_kib
        if got_kib:
            grown[g.name] = grown.get(g.name, 0) + got_kib


def survival_need_kib(g: _Guest, ledger: _Ledger, config: Config) -> int:
    """What a ramping guest lacks, at the target planned so far, not to run out of memory altogether before
    memcoord can act again."""
    free_kib = (g.free_kib or 0) + ledger.target_kib[g.name] - g.base_kib
    return max(0, int(g.ramp_kib_per_s * (g.age_s + lookahead_s(config))) - free_kib)


def _grow_to_survive(guests: list[_Guest], ledger: _Ledger, config: Config, grown: dict[str, int]) -> None:
    """A starving guest that will run out of memory before memcoord can act again, at its ramp, is lent what it
    lacks from memory the guard holds back for guests that are not starving: their grants and ramps may come
    to the host's memory later, or never; its OOM kill comes now. Never from the guard itself: lent memory is
    still inside host available - min_available_mib. If the lenders do touch theirs, relief answers."""
    for g in sorted(
        (g for g in guests if g.guest_class is GuestClass.STARVING), key=lambda g: (g.free_kib or 0, g.name)
    ):
        need_kib = survival_need_kib(g, ledger, config)
        if need_kib <= 0 or ledger.lendable_kib <= 0:
            continue
        got_kib = ledger.give(g.name, need_kib, Action.GROW, LENT_REASON, lend=True)
        if got_kib:
            grown[g.name] = grown.get(g.name, 0) + got_kib


def _share_pool_with_busy(guests: list[_Guest], ledger: _Ledger, pool_kib: int, just_lowered: set[str]) -> None:
    """Busy guests share what is left of the pool, each up to `busy_need_kib` (the rest stays with the host);
    not one memcoord just lowered (its stats lag the balloon, and giving back what was just taken makes the two
    ping-pong), nor one whose balloon is still moving."""
    busy = [
        g
        for g in guests
        if g.guest_class is GuestClass.BUSY and g.pending is None and g.name not in just_lowered and busy_need_kib(g)
    ]
    for i, g in enumerate(busy):
        if pool_kib <= 0:
            break
        share_kib = min(pool_kib // (len(busy) - i), busy_need_kib(g))
        pool_kib -= ledger.give(g.name, share_kib, Action.GROW, "busy: share of memory reclaimed this tick")


def _collect_idle_tax(guests: list[_Guest], ledger: _Ledger, config: Config, grown: list[str], skip: set[str]) -> None:
    """Each idle guest pays idle_tax_mib to the guests that grew, no more than they still have room for, and
    not below halfway between its starving and wasteful lines: a tax, not a drain (taxed on every tick that
    someone grows, an idle guest would otherwise lose the buffer its next burst needs)."""
    tax_kib = mib_to_kib(config.guest.idle_tax_mib)
    room_kib = sum(ledger.room_kib(n) for n in grown)
    if not grown or not tax_kib or room_kib <= 0:
        return
    collected_kib = 0
    for g in guests:
        if g.guest_class is GuestClass.IDLE and _settled(g) and not ledger.lowered(g.name) and g.name not in skip:
            if collected_kib >= room_kib:
                break
            keep_kib = (g.starving_kib + g.wasteful_kib) // 2
            collected_kib += ledger.take(
                g.name,
                min(tax_kib, room_kib - collected_kib, (g.free_kib or 0) - keep_kib),
                Action.TAX,
                "idle tax while others grow",
            )
    for i, name in enumerate(grown):
        share_kib = collected_kib // (len(grown) - i)
        collected_kib -= ledger.give(name, share_kib, Action.GROW, "idle tax received")


# -- the whole tick ------------------------------------------------------------------------------------------
def decide(snapshot: Snapshot, state: PolicyState, config: Config) -> tuple[Plan, PolicyState]:
    now_s = snapshot.taken_at_s
    managed = sorted((d for d in snapshot.domains if config.manages(d.name, d.settings)), key=lambda d: d.name)
    guests = [_look_at(d, state, config, now_s) for d in managed]
    just_raised = {n for n, t in state.raised_at_s.items() if now_s - t <= config.stale_after_s}
    # A guest memcoord just grew keeps its grant while it may still grow into it; one steady again on a new
    # sample (its burst has peaked) may give back what it did not use, to a guest starving now.
    still_growing = {g.name for g in guests if g.name in just_raised and not _steady_again(g)}
    ledger = _Ledger(snapshot.host.available_kib, guests, config, still_growing)

    clamped = _clamp_to_bounds(guests, ledger, config)
    shortfall_kib = _relieve_host(guests, ledger, config, skip=clamped)
    lowered = {g.name for g in guests if ledger.lowered(g.name)} | clamped
    just_lowered = {n for n, t in state.lowered_at_s.items() if now_s - t <= config.stale_after_s}
    pool_kib = 0
    if _reclaim_allowed(guests, snapshot.host.available_kib, config):
        # Not a guest memcoord just grew: taking back a grant before it is used makes the two ping-pong.
        pool_kib = _reclaim_wasteful(guests, ledger, config, skip=lowered | just_raised)
    # Below the guard nobody grows (but to a floor): relief's memory reaches others once the host shows it.
    if ledger.deficit_kib:
        ledger.notes.append(f"host guard: host {kib_to_mib(ledger.deficit_kib):.0f} MiB below it, nobody grows")
    else:
        grown, unmet_kib = _grow_starving(guests, ledger, config, skip=clamped)
        headroom_before_kib = ledger.headroom_kib
        _take_for_the_starving(guests, ledger, config, sum(unmet_kib.values()), skip=clamped | still_growing)
        returned_kib = ledger.headroom_kib - headroom_before_kib
        _grow_from_returned_grants(guests, ledger, unmet_kib, grown, returned_kib)
        _grow_to_survive(guests, ledger, config, grown)
        # The pool goes to the starving first: what they got came out of it, the rest is the busy guests'.
        pool_kib = max(0, pool_kib - sum(grown.values()))
        _share_pool_with_busy(guests, ledger, pool_kib, just_lowered | lowered)
        _collect_idle_tax(guests, ledger, config, list(grown), skip=just_raised)

    plan = Plan(
        ledger.changes(),
        {g.name: g.guest_class for g in guests},
        ledger.headroom_kib,
        tuple(ledger.notes),
        host_deficit_kib=ledger.deficit_kib,
        relief_shortfall_kib=shortfall_kib,
    )
    return plan, _next_state(guests, state, just_lowered, just_raised, ledger)


def _next_state(
    guests: list[_Guest], state: PolicyState, just_lowered: set[str], just_raised: set[str], ledger: _Ledger
) -> PolicyState:
    """What the next tick needs: samples, pending targets, recent lowerings, and grants still untouched.

    A grant shrinks as the guest touches it (QEMU's RSS grows into it) and is dropped once the guest is
    steady on a new sample past the first seconds after it was raised: it is not growing into it, and if it
    does later, relief answers.
    """
    granted_kib = {}
    for g in guests:
        grant_kib = min(g.grant_kib, ledger.draw_kib(g, g.base_kib) if g.grant_kib else 0)
        if g.new_sample and g.guest_class in (GuestClass.IDLE, GuestClass.WASTEFUL) and g.name not in just_raised:
            grant_kib = 0
        if grant_kib > 0:
            granted_kib[g.name] = grant_kib
    return PolicyState(
        samples={g.name: g.sample for g in guests if g.sample is not None},
        pending={g.name: g.pending for g in guests if g.pending is not None},
        lowered_at_s={n: t for n, t in state.lowered_at_s.items() if n in just_lowered},
        granted_kib=granted_kib,
        raised_at_s={n: t for n, t in state.raised_at_s.items() if n in just_raised},
    )
