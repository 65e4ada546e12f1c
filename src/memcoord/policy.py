"""The seed's balloon policy as one pure function: snapshot + state + config -> plan + next state.

No I/O, no clock, no logging: the same inputs always give the same plan, whatever order the domains are
listed in. Read top to bottom, it is the algorithm:

1. classify every managed guest from its balloon stats (starving / wasteful / idle / busy; no-stats and
   stale guests are left alone, and so is a guest whose balloon is still moving to the last target set);
2. clamp guests outside [floor, ceiling] back inside, one reclaim step at a time downwards;
3. reclaim one step from each wasteful idle guest into a pool;
4. grow each starving guest one step (a scarce headroom shared evenly), then share what is left of the pool
   among busy guests;
5. if a starving guest grew, each idle guest pays the idle tax, which goes to the starving guests;
6. every growth goes through the host guard (see `_Ledger`).

Where the C original differs (half the domain added to the pool, no clamps, tax only when more than one guest
paid, a fixed 80 MB free-memory guard), this follows DESIGN.md, not the C.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import Config
from .model import (
    KIB_PER_MIB,
    Action,
    Change,
    DomainStats,
    GuestClass,
    Plan,
    Snapshot,
    kib_to_mib,
    mib_to_kib,
)

# Stats that move less than this between two guest samples count as unchanged (the seed compared MiB).
STEADY_TOLERANCE_KIB = KIB_PER_MIB
# A busy guest that would be starving after this many more samples at its last pace competes for scarce headroom.
STARVE_HORIZON_SAMPLES = 10
# A balloon within this of the target memcoord set has arrived (QEMU stops a few pages short at times).
SETTLED_TOLERANCE_KIB = 4 * KIB_PER_MIB


@dataclass(frozen=True, slots=True)
class Sample:
    """The last guest stats sample the policy saw for a domain, and whether it matched the one before."""

    last_update_s: int
    unused_kib: int
    current_kib: int
    steady: bool
    used_growth_kib: int = 0  # how much its used memory grew since the sample before


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


def applied(state: PolicyState, changes: Iterable[Change], now_s: float) -> PolicyState:
    """Record the targets the shell really set, so the next ticks wait for those balloons to get there.

    balloon.current is where the balloon is, not where it is going: deciding again from it while it moves
    would grow a guest twice for one need, and the host guard would count less than was granted.
    """
    changes = list(changes)
    pending = {**state.pending, **{c.domain: Pending(c.to_kib, now_s) for c in changes}}
    lowered_at_s = {**state.lowered_at_s, **{c.domain: now_s for c in changes if c.delta_kib < 0}}
    return PolicyState(state.samples, pending, lowered_at_s)


def _still_pending(pending: Pending | None, dom: DomainStats, config: Config, now_s: float) -> Pending | None:
    """The pending target while the balloon is on its way; None once it arrived or gave up.

    A balloon that cannot reach its target (a guest that will not give pages up) is believed where it is
    after the stale-stats time.
    """
    if pending is None or abs(dom.current_kib - pending.target_kib) <= SETTLED_TOLERANCE_KIB:
        return None
    return pending if now_s - pending.set_at_s <= config.stale_after_s else None


def _observe(prev: Sample | None, dom: DomainStats) -> Sample | None:
    """Fold a new stats sample into the domain's history; a sample with the same timestamp is not new.

    A guest is steady when its unused memory did not change, or when it changed exactly as much as the balloon
    moved (its used memory did not change): that is memcoord's own doing, not the guest being busy.
    """
    if dom.unused_kib is None or not dom.last_update_s:
        return prev
    if prev is not None and dom.last_update_s <= prev.last_update_s:
        return prev
    if prev is None:
        return Sample(dom.last_update_s, dom.unused_kib, dom.current_kib, steady=False)
    used_grew_kib = (dom.current_kib - dom.unused_kib) - (prev.current_kib - prev.unused_kib)
    unused_moved_kib = abs(dom.unused_kib - prev.unused_kib)
    steady = min(unused_moved_kib, abs(used_grew_kib)) < STEADY_TOLERANCE_KIB
    return Sample(dom.last_update_s, dom.unused_kib, dom.current_kib, steady, used_growth_kib=used_grew_kib)


def classify(dom: DomainStats, sample: Sample | None, config: Config, now_s: float) -> GuestClass:
    if dom.unused_kib is None or not dom.last_update_s or sample is None:
        return GuestClass.NO_STATS
    if now_s - dom.last_update_s > config.stale_after_s:
        return GuestClass.STALE
    if dom.unused_kib <= config.guest.starving_mib * KIB_PER_MIB:
        return GuestClass.STARVING
    if not sample.steady:
        return GuestClass.BUSY
    if dom.unused_kib >= config.guest.wasteful_mib * KIB_PER_MIB:
        return GuestClass.WASTEFUL
    return GuestClass.IDLE


def may_take_kib(dom: DomainStats, target_kib: int, overhead_kib: int) -> int:
    """Host memory a guest may still take if it fills target_kib: the host guard's view of one guest.

    Its free memory, except the part QEMU already backs (pages the guest touched and freed), plus any change
    of target. QEMU's RSS includes QEMU's own overhead, which a full guest needs as well. Without guest stats
    all of current + overhead - RSS counts; without RSS, all the free memory.
    """
    unbacked_kib = dom.current_kib + overhead_kib - (dom.rss_kib or 0)
    free_kib = unbacked_kib if dom.unused_kib is None else min(dom.unused_kib, unbacked_kib)
    return max(0, max(0, free_kib) + target_kib - dom.current_kib)


def host_headroom_kib(snapshot: Snapshot, config: Config) -> int:
    """What the host guard lets memcoord hand out now (before any plan): host available - what the managed
    guests may still take - host.min_available_mib. Negative when the host is already below its guard."""
    return _Ledger(snapshot, [d for d in snapshot.domains if config.manages(d.name)], {}, config).headroom_kib


def _whole_mib(kib: int) -> int:
    return kib - kib % KIB_PER_MIB


class _Ledger:
    """Targets being planned, and the host headroom they leave.

    Host guard: headroom = host available - what every guest may still take (`may_take_kib`) - the floor
    min_available. Growth only spends headroom, so all growth in the tick is counted together, and memory
    granted in earlier ticks but not yet touched by the guest is counted too. Reclaim of memory QEMU does not
    back gives headroom back at once; memory it backs comes back through host available on a later tick.
    """

    def __init__(
        self, snapshot: Snapshot, managed: list[DomainStats], pending: dict[str, Pending], config: Config
    ) -> None:
        self.doms = {d.name: d for d in managed}
        self.target_kib = {d.name: d.current_kib for d in managed}
        # Each guest's [floor, ceiling], looked up once per tick (a floor above the ceiling yields to it).
        self.ceiling_kib = {d.name: config.ceiling_kib(d.name, d.max_kib) for d in managed}
        self.floor_kib = {d.name: min(config.floor_kib(d.name), self.ceiling_kib[d.name]) for d in managed}
        self.actions: dict[str, tuple[Action, list[str]]] = {}
        self.notes: list[str] = []
        self.overhead_kib = mib_to_kib(config.host.guest_overhead_mib)
        # A balloon still growing toward its target will take that target: count the target, not where it is.
        outstanding_kib = sum(
            may_take_kib(
                d, max(d.current_kib, pending[d.name].target_kib if d.name in pending else 0), self.overhead_kib
            )
            for d in managed
        )
        self.headroom_kib = snapshot.host.available_kib - outstanding_kib - mib_to_kib(config.host.min_available_mib)

    def _move(self, name: str, new_kib: int, action: Action, reason: str) -> None:
        dom = self.doms[name]
        old_kib = self.target_kib[name]
        self.headroom_kib -= may_take_kib(dom, new_kib, self.overhead_kib) - may_take_kib(
            dom, old_kib, self.overhead_kib
        )
        self.target_kib[name] = new_kib
        if name in self.actions:
            self.actions[name][1].append(reason)
        else:
            self.actions[name] = (action, [reason])

    def take(self, name: str, want_kib: int, action: Action, reason: str) -> int:
        """Lower a target by up to want_kib, never below the floor; returns what was taken."""
        got_kib = _whole_mib(min(want_kib, self.target_kib[name] - self.floor_kib[name]))
        if got_kib <= 0:
            return 0
        self._move(name, self.target_kib[name] - got_kib, action, reason)
        return got_kib

    def give(self, name: str, want_kib: int, action: Action, reason: str, share_kib: int | None = None) -> int:
        """Raise a target by up to want_kib, never above the ceiling nor past the host guard (nor past its
        share_kib of a headroom too small for everyone)."""
        room_kib = self.ceiling_kib[name] - self.target_kib[name]
        allowed_kib = max(0, self.headroom_kib) if share_kib is None else min(max(0, self.headroom_kib), share_kib)
        got_kib = _whole_mib(min(want_kib, room_kib, allowed_kib))
        if got_kib < min(want_kib, room_kib):
            self.notes.append(
                f"host guard: {name} wanted {kib_to_mib(min(want_kib, room_kib)):.0f} MiB, "
                f"got {kib_to_mib(max(got_kib, 0)):.0f} MiB"
            )
        if got_kib <= 0:
            return 0
        self._move(name, self.target_kib[name] + got_kib, action, reason)
        return got_kib

    def changes(self) -> tuple[Change, ...]:
        out = []
        for name in sorted(self.actions):
            action, reasons = self.actions[name]
            before_kib, after_kib = self.doms[name].current_kib, self.target_kib[name]
            if before_kib != after_kib:
                out.append(Change(name, action, before_kib, after_kib, "; ".join(reasons)))
        return tuple(out)


def _by_name(doms: Iterable[DomainStats]) -> list[DomainStats]:
    return sorted(doms, key=lambda d: d.name)


def decide(snapshot: Snapshot, state: PolicyState, config: Config) -> tuple[Plan, PolicyState]:
    managed = _by_name(d for d in snapshot.domains if config.manages(d.name))
    samples: dict[str, Sample] = {}
    classes: dict[str, GuestClass] = {}
    pending: dict[str, Pending] = {}
    for dom in managed:
        prev = state.samples.get(dom.name)
        sample = _observe(prev, dom)
        if sample is not None:
            samples[dom.name] = sample
        classes[dom.name] = classify(dom, sample, config, snapshot.taken_at_s)
        if classes[dom.name] is GuestClass.WASTEFUL and sample is prev:
            # No new guest sample since the last tick: its unused figure predates our last reclaim.
            classes[dom.name] = GuestClass.IDLE
        still = _still_pending(state.pending.get(dom.name), dom, config, snapshot.taken_at_s)
        if still is not None:
            pending[dom.name] = still

    ledger = _Ledger(snapshot, managed, pending, config)
    guest = config.guest
    reclaim_step_kib = mib_to_kib(guest.reclaim_step_mib)
    # Guests whose balloon is still moving to the last target wait for it; no second decision on old figures.
    settled = [d for d in managed if d.name not in pending]
    trusted = [d for d in settled if classes[d.name] not in (GuestClass.NO_STATS, GuestClass.STALE)]

    # Clamps: below the floor is raised (safe without stats); above the ceiling comes down one step at a time.
    clamped: set[str] = set()
    for dom in settled:
        floor_kib = ledger.floor_kib[dom.name]
        if dom.current_kib < floor_kib:
            ledger.give(dom.name, floor_kib - dom.current_kib, Action.CLAMP, "below its floor")
            clamped.add(dom.name)
    for dom in trusted:
        excess_kib = dom.current_kib - ledger.ceiling_kib[dom.name]
        if excess_kib > 0:
            ledger.take(dom.name, min(excess_kib, reclaim_step_kib), Action.CLAMP, "above its max_mib")
            clamped.add(dom.name)

    groups: dict[GuestClass, list[DomainStats]] = {c: [] for c in GuestClass}
    for dom in trusted:
        if dom.name not in clamped:
            groups[classes[dom.name]].append(dom)

    pool_kib = 0
    for dom in groups[GuestClass.WASTEFUL]:
        pool_kib += ledger.take(
            dom.name,
            reclaim_step_kib,
            Action.RECLAIM,
            f"idle with {kib_to_mib(dom.unused_kib or 0):.0f} MiB unused >= wasteful {guest.wasteful_mib} MiB",
        )

    # Starving guests grow one step each. When the headroom cannot give a step to everyone who needs one soon
    # (the starving, and the busy guests that starve within a few samples at their pace), it is shared evenly,
    # smallest needs first so that what they leave goes to the others; the busy guests' shares stay in the
    # headroom for the tick in which they starve. Course scenario 2 (four hogs) grew 375..673 MiB when the
    # first come took all.
    grow_step_kib = mib_to_kib(guest.grow_step_mib)
    want_kib = {
        d.name: min(grow_step_kib, ledger.ceiling_kib[d.name] - d.current_kib) for d in groups[GuestClass.STARVING]
    }
    starving_kib = mib_to_kib(guest.starving_mib)
    contenders = sum(
        1
        for d in groups[GuestClass.BUSY]
        if (d.unused_kib or 0) - STARVE_HORIZON_SAMPLES * samples[d.name].used_growth_kib <= starving_kib
    )
    scarce = sum(want_kib.values()) + contenders * grow_step_kib > ledger.headroom_kib
    starving = sorted(groups[GuestClass.STARVING], key=lambda d: (want_kib[d.name], d.unused_kib or 0, d.name))
    grown: list[str] = []
    for i, dom in enumerate(starving):
        got_kib = ledger.give(
            dom.name,
            grow_step_kib,
            Action.GROW,
            f"starving: {kib_to_mib(dom.unused_kib or 0):.0f} MiB unused <= {guest.starving_mib} MiB",
            share_kib=max(0, ledger.headroom_kib) // (len(starving) - i + contenders) if scarce else None,
        )
        if got_kib:
            grown.append(dom.name)
        pool_kib = max(0, pool_kib - got_kib)

    # Busy guests share what is left of the pool; not one memcoord just lowered (its stats lag the balloon, and
    # giving back what was just taken makes the two ping-pong).
    just_lowered = {n for n, t in state.lowered_at_s.items() if snapshot.taken_at_s - t <= config.stale_after_s}
    busy = [d for d in groups[GuestClass.BUSY] if d.name not in just_lowered]
    for i, dom in enumerate(busy):
        share_kib = pool_kib // (len(busy) - i)
        pool_kib -= ledger.give(dom.name, share_kib, Action.GROW, "busy: share of memory reclaimed this tick")

    if grown and guest.idle_tax_mib:
        tax_kib = sum(
            ledger.take(d.name, mib_to_kib(guest.idle_tax_mib), Action.TAX, "idle tax while others grow")
            for d in groups[GuestClass.IDLE]
        )
        for i, name in enumerate(grown):
            share_kib = tax_kib // (len(grown) - i)
            tax_kib -= ledger.give(name, share_kib, Action.GROW, "idle tax received")

    plan = Plan(ledger.changes(), classes, ledger.headroom_kib, tuple(ledger.notes))
    return plan, PolicyState(samples, pending, {n: t for n, t in state.lowered_at_s.items() if n in just_lowered})
