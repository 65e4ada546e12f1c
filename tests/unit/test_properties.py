"""Property tests: the pure policy and the simulator, hammered by hypothesis.

Each test states one promise memcoord makes to the guests it manages: no target below the floor or
above the max, no growth past the host guard, no memory handed out that was not reclaimed or free on the host,
no reclaim on missing or stale stats, disabled and unmatched guests never touched, no dependence on the order
libvirt lists domains in; and over many simulated ticks no idle guest OOM-killed, no guest below its floor.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from hypothesis import HealthCheck, assume, example, find, given, settings
from hypothesis import strategies as st

from memcoord.core.config import Config
from memcoord.core.model import LOWERING_ACTIONS, Action, DomainStats, GuestClass, HostStats, Rule, Snapshot, mib_to_kib
from memcoord.core.policy import (
    MIN_MOVE_KIB,
    Pending,
    PolicyState,
    bands,
    decide,
    host_headroom_kib,
    silence_limit_s,
    thresholds_kib,
)
from memcoord.sim.host import KERNEL_USED_KIB, SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import Hog, Idle
from tests.helpers.snapshots import dom

MIB = 1024
NOW_S = 1_000_000.0
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.sampled_from([f"vm{i}" for i in range(8)] + ["web1", "db", "mcfault-a", "other"])


@st.composite
def configs(draw: st.DrawFn) -> Config:
    starving = draw(st.integers(0, 300))
    gap = draw(st.integers(2, 500))
    guard = draw(st.integers(0, 8192))
    data = {
        "libvirt": {"domains": draw(st.sampled_from([["*"], ["vm*"], ["vm*", "web1"], ["mcfault-*"], []]))},
        "loop": {"interval_s": draw(st.sampled_from([0.5, 1.0, 2.0])), "stats_period_s": draw(st.integers(1, 5))},
        "guest": {
            "starving_mib": starving,
            "starving_pct": draw(st.sampled_from([0.0, 5.0, 20.0])),
            "wasteful_mib": starving + gap,
            "wasteful_pct": draw(st.sampled_from([0.0, 15.0, 40.0])),
            "grow_step_mib": draw(st.integers(1, 1024)),
            "grow_step_pct": draw(st.sampled_from([0.0, 5.0])),
            "reclaim_step_mib": draw(st.integers(1, gap - 1)),
            "min_mib": draw(st.integers(1, 1024)),
            "idle_tax_mib": draw(st.integers(0, 64)),
        },
        "host": {
            "min_available_mib": guard,
            "target_available_mib": draw(st.sampled_from([0, guard + 1, guard + 4096])),
            "relief_step_mib": draw(st.integers(1, 1024)),
        },
        "domains": {},
    }
    for name in draw(st.lists(names, max_size=4, unique=True)):
        override: dict[str, object] = {"enabled": draw(st.booleans())}
        lo = draw(st.none() | st.integers(1, 4096))
        if lo is not None:
            override["min_mib"] = lo
        hi = draw(st.none() | st.integers(lo or 1, 8192))
        if hi is not None:
            override["max_mib"] = hi
        data["domains"][name] = override
    return Config.model_validate(data)


@st.composite
def domain_stats(draw: st.DrawFn, name: str) -> DomainStats:
    max_kib = draw(st.integers(64, 16384)) * MIB + draw(st.sampled_from([0, 0, 0, 1, 512]))
    current_kib = draw(st.integers(1, max_kib) | st.integers(max_kib // 4, max_kib * 3 // 4).map(lambda k: k - k % MIB))
    has_stats = draw(st.integers(0, 9)) > 0
    unused_kib = (
        min(current_kib, draw(st.integers(0, 1500)) * MIB + draw(st.sampled_from([0, 0, 1, 700])))
        if has_stats
        else None
    )
    age_s = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 10, 100, 10**6]))
    last_update_s = int(NOW_S) - age_s if has_stats else draw(st.sampled_from([None, 0]))
    rss_kib = draw(st.none() | st.integers(0, max_kib + 64 * MIB) | st.just(current_kib))
    return DomainStats(
        name=name,
        current_kib=current_kib,
        max_kib=max_kib,
        unused_kib=unused_kib,
        usable_kib=unused_kib,
        available_kib=current_kib,
        rss_kib=rss_kib,
        last_update_s=last_update_s,
    )


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    doms = [draw(domain_stats(n)) for n in draw(st.lists(names, max_size=8, unique=True))]
    total_kib = draw(st.integers(1024, 65536)) * MIB
    available_kib = draw(st.integers(0, total_kib) | st.integers(total_kib // 2, total_kib))
    reserved_kib = draw(st.sampled_from([0, 0, 0, 512 * MIB]))
    host = HostStats(available_kib=available_kib, total_kib=total_kib, reserved_kib=reserved_kib)
    return Snapshot(host=host, domains=tuple(doms), taken_at_s=NOW_S)


@st.composite
def states(draw: st.DrawFn, snapshot: Snapshot) -> PolicyState:
    """A previous tick: the same domains one sample earlier, unused moved or not (steady or busy)."""
    prev = []
    for d in snapshot.domains:
        if d.unused_kib is None or not d.last_update_s or draw(st.integers(0, 4)) == 0:
            continue
        moved_kib = draw(st.sampled_from([0, 0, 512, 50 * MIB, -50 * MIB]))
        prev.append(
            replace(
                d,
                unused_kib=max(0, d.unused_kib + moved_kib),
                last_update_s=d.last_update_s - draw(st.integers(1, 3)),
            )
        )
    earlier = Snapshot(host=snapshot.host, domains=tuple(prev), taken_at_s=NOW_S - 1)
    _plan, state = decide(earlier, PolicyState(), _everything(draw(configs())))
    # Balloons still on their way to a target memcoord set, grants not yet touched, guests lowered just now, guests
    # that did not give when last asked.
    pending, granted, lowered, balked = {}, {}, {}, {}
    for d in snapshot.domains:
        if draw(st.integers(0, 3)) == 0:
            target_kib = max(MIB, d.current_kib + draw(st.sampled_from([-300, -50, 50, 300, 1000])) * MIB)
            set_at_s = NOW_S - draw(st.sampled_from([0.5, 1, 3, 60]))
            # Set from where the balloon is, or from elsewhere (an admin set it meanwhile).
            from_kib = max(MIB, d.current_kib + draw(st.sampled_from([0, 0, -200, 200])) * MIB)
            pending[d.name] = Pending(min(target_kib, d.max_kib), set_at_s, from_kib)
        if draw(st.integers(0, 3)) == 0:
            granted[d.name] = draw(st.integers(1, 2048)) * MIB
        if draw(st.integers(0, 4)) == 0:
            lowered[d.name] = NOW_S - draw(st.sampled_from([0.5, 2, 60]))
        if draw(st.integers(0, 4)) == 0:
            balked[d.name] = NOW_S - draw(st.sampled_from([1, 10, 600]))
    return PolicyState(state.samples, pending, lowered, granted, no_progress_at_s=balked)


def _everything(config: Config) -> Config:
    """The same config managing every domain, so the earlier tick records every sample."""
    libvirt = config.libvirt.model_copy(update={"domains": ("*",)})
    return config.model_copy(update={"libvirt": libvirt, "domains": {}})


@st.composite
def cases(draw: st.DrawFn) -> tuple[Snapshot, PolicyState, Config]:
    snapshot = draw(snapshots())
    return snapshot, draw(states(snapshot)), draw(configs())


def _floor_kib(config: Config, d: DomainStats) -> int:
    return min(config.floor_kib(d.name, d.max_kib), config.ceiling_kib(d.name, d.max_kib))


@SETTINGS
@given(cases())
def test_targets_stay_between_floor_and_max(case: tuple[Snapshot, PolicyState, Config]) -> None:
    snapshot, state, config = case
    plan, _ = decide(snapshot, state, config)
    doms = {d.name: d for d in snapshot.domains}
    for c in plan.changes:
        d = doms[c.domain]
        # From where the balloon is, or from the target it is still moving to.
        pending = state.pending.get(c.domain)
        assert c.from_kib == d.current_kib or (pending is not None and c.from_kib == pending.target_kib)
        assert c.to_kib > 0
        if c.to_kib < c.from_kib:
            assert c.to_kib >= _floor_kib(config, d), c
            # never lowered below the configured floor unless the admin's max_mib asks for less
            assert c.to_kib >= min(config.floor_kib(d.name, d.max_kib), config.ceiling_kib(d.name, d.max_kib)), c
        else:
            assert c.to_kib <= config.ceiling_kib(d.name, d.max_kib), c
            assert c.to_kib <= d.max_kib, c


@SETTINGS
@given(cases())
def test_growth_never_takes_the_host_below_its_guard(case: tuple[Snapshot, PolicyState, Config]) -> None:
    """Stated on the host, not on the policy's own formula: everything handed out this tick fits in the
    host's available memory above the guard and what QEMU releases for this tick's lowerings (measured on the
    host: what it backs above each new target, from its RSS). Below the guard nobody grows, except a guest raised
    to its floor, and for what this tick's lowerings release."""
    snapshot, state, config = case
    plan, _ = decide(snapshot, state, config)
    guard_kib = mib_to_kib(config.host.min_available_mib)
    above_guard_kib = snapshot.host.available_kib - guard_kib - snapshot.host.reserved_kib
    doms = {d.name: d for d in snapshot.domains}
    overhead_kib = mib_to_kib(config.host.guest_overhead_mib)

    def backed_above_kib(d: DomainStats, target_kib: int) -> int:
        return 0 if d.rss_kib is None else max(0, d.rss_kib - overhead_kib - target_kib)

    # A lowering's balloon inflates within the second in which a grown balloon deflates (README, "One budget").
    released_kib = sum(
        backed_above_kib(doms[c.domain], c.to_kib) - backed_above_kib(doms[c.domain], c.from_kib)
        for c in plan.changes
        if c.to_kib < c.from_kib
    )
    # Growth beyond where each balloon is (up to it, a lowering still on its way is only called off).
    grown_kib = sum(
        max(0, c.to_kib - max(c.from_kib, doms[c.domain].current_kib))
        for c in plan.changes
        if c.action is not Action.CLAMP
    )
    assert grown_kib <= max(0, above_guard_kib) + released_kib
    if above_guard_kib < 0:
        assert grown_kib <= released_kib, plan.changes
    # Memory granted earlier and not yet touched is kept out of the budget; growth never makes it worse, but for
    # what is lent to a guest that would run out before the next tick and the idle tax paid to the starving
    # (bounded by the host, above).
    before_kib = host_headroom_kib(snapshot, config, state)
    assert before_kib <= above_guard_kib
    if not any(c.why is not None and c.why.rule in (Rule.LENT, Rule.TAX, Rule.FLOOR) for c in plan.changes):
        assert plan.host_headroom_kib >= min(0, before_kib)


@SETTINGS
@given(cases())
def test_relief_never_takes_from_the_starving_or_below_a_floor_or_more_than_a_step(
    case: tuple[Snapshot, PolicyState, Config],
) -> None:
    snapshot, state, config = case
    plan, _ = decide(snapshot, state, config)
    doms = {d.name: d for d in snapshot.domains}
    step_kib = mib_to_kib(config.host.relief_step_mib)
    relieved = [c for c in plan.changes if c.action is Action.RELIEVE]
    if relieved:
        assert snapshot.host.available_kib < mib_to_kib(config.host.min_available_mib) + snapshot.host.reserved_kib
    for c in relieved:
        assert plan.classes[c.domain].trusted and plan.classes[c.domain] is not GuestClass.STARVING
        assert c.to_kib >= _floor_kib(config, doms[c.domain])
        assert -c.delta_kib <= step_kib
    for c in plan.changes:
        if c.action in LOWERING_ACTIONS:
            assert plan.classes[c.domain] is not GuestClass.STARVING, c


@SETTINGS
@given(cases())
def test_missing_or_stale_stats_are_never_reclaimed(case: tuple[Snapshot, PolicyState, Config]) -> None:
    snapshot, state, config = case
    plan, _ = decide(snapshot, state, config)
    doms = {d.name: d for d in snapshot.domains}
    for c in plan.changes:
        d = doms[c.domain]
        untrusted = (
            d.unused_kib is None or not d.last_update_s or snapshot.taken_at_s - d.last_update_s > config.stale_after_s
        )
        if untrusted:
            assert c.delta_kib > 0, f"reclaimed {c.domain} without fresh stats: {c}"
            # Raised to its floor, or (stats late, within the bound, while it ramped) grown on its projection.
            assert plan.classes[c.domain] in (GuestClass.NO_STATS, GuestClass.STALE, GuestClass.BAD_STATS) or (
                c.why is not None and c.why.rule in (Rule.NEED, Rule.LENT) and c.why.age_s > config.stale_after_s
            ), c


def test_the_generator_reaches_growth_on_late_stats() -> None:
    """The cases above do reach the policy's path for a guest whose stats are late while it ramped (grown on its
    projection): the stale-stats property is not only ever shown guests that are simply left alone."""

    def grown_late(case: tuple[Snapshot, PolicyState, Config]) -> bool:
        snapshot, state, config = case
        plan, _ = decide(snapshot, state, config)
        return any(c.delta_kib > 0 and c.why is not None and c.why.age_s > config.stale_after_s for c in plan.changes)

    find(cases(), grown_late, settings=settings(max_examples=5000, deadline=None, database=None))


@SETTINGS
@given(cases())
def test_no_lowering_takes_a_guest_below_its_low(case: tuple[Snapshot, PolicyState, Config]) -> None:
    """Reclaim, relief, clamp, comfort and tax all stop at the guest's low (bands() says the same as the plan); the
    tax stops at the middle of the band, and takes no more than idle_tax_mib for each idle guest."""
    snapshot, state, config = case
    plan, _ = decide(snapshot, state, config)
    assert plan.bands == bands(snapshot, state, config)
    for c in plan.changes:
        band = plan.bands[c.domain]
        assert band.floor_kib <= band.low_kib <= band.high_kib <= band.ceiling_kib, band
        if c.delta_kib < 0:
            assert c.to_kib >= band.low_kib, (c, band)
        if c.action is Action.TAX:
            assert c.to_kib >= (band.low_kib + band.high_kib) // 2, (c, band)
    idle = sum(cls is GuestClass.IDLE for cls in plan.classes.values())
    taxed_kib = -sum(c.delta_kib for c in plan.changes if c.action is Action.TAX)
    assert taxed_kib <= idle * mib_to_kib(config.guest.idle_tax_mib), plan.changes


@SETTINGS
@given(cases())
def test_nothing_is_held_for_a_guest_silent_longer_than_the_bound(case: tuple[Snapshot, PolicyState, Config]) -> None:
    """A grant to a guest whose stats are older than the bound (or absent) takes nothing from the budget."""
    snapshot, state, config = case
    limit_s = silence_limit_s(config)
    silent = {
        d.name for d in snapshot.domains if not d.last_update_s or snapshot.taken_at_s - d.last_update_s > limit_s
    }
    granted = {n: g for n, g in state.granted_kib.items() if n not in silent}
    assert host_headroom_kib(snapshot, config, state) == host_headroom_kib(
        snapshot, config, replace(state, granted_kib=granted)
    )


@st.composite
def adversaries(draw: st.DrawFn) -> tuple[Snapshot, PolicyState, Config, str, DomainStats]:
    """A case, one of its guests an adversary: any numbers it can report in its stats (its balloon's size and
    maximum, QEMU's RSS are the host's)."""
    snapshot, state, config = draw(cases())
    managed = [d for d in snapshot.domains if config.manages(d.name)]
    assume(len(managed) >= 2)
    honest = draw(st.sampled_from(managed))
    figure = st.none() | st.integers(0, 64 * 1024).map(lambda m: m * MIB)
    liar = replace(
        honest,
        unused_kib=draw(figure),
        usable_kib=draw(figure),
        available_kib=draw(figure),
        last_update_s=draw(st.sampled_from([None, int(NOW_S), int(NOW_S) - 1, int(NOW_S) - 7, int(NOW_S) + 5])),
    )
    return snapshot, state, config, honest.name, liar


def _starving(name: str, current_mib: int, max_mib: int, usable_mib: int) -> DomainStats:
    d = dom(name, current_mib, usable_mib, max_mib=max_mib, last_s=int(NOW_S))
    return replace(d, available_kib=d.current_kib)


def _scarce(above_guard_mib: int, *doms: DomainStats) -> Snapshot:
    return Snapshot(HostStats(mib_to_kib(Config().host.min_available_mib + above_guard_mib), 65536 * MIB), doms, NOW_S)


# Guests starving with too little above the guard for each to get a move.
_TWO = _scarce(48, _starving("vm1", 1024, 2048, 100), _starving("vm2", 2048, 8192, 0))
_THREE = _scarce(
    63, _starving("vm1", 1024, 2048, 100), _starving("vm2", 2048, 8192, 50), _starving("vm3", 4096, 16384, 0)
)

# An honest guest QEMU shows 324 MiB it never touched (the host swapped it out), beside a liar that touches all.
_BELIED = _scarce(330, replace(_starving("vm1", 1024, 2048, 100), rss_kib=600 * MIB), _starving("vm2", 8192, 65536, 0))


@SETTINGS
@given(adversaries())
@example((_TWO, PolicyState(), Config(), "vm2", _TWO.domains[1]))
@example((_THREE, PolicyState(), Config(), "vm3", _THREE.domains[2]))
@example((_BELIED, PolicyState(), Config(), "vm2", _BELIED.domains[1]))
def test_an_adversarial_guest_changes_no_others_growth_beyond_its_weight_share(
    case: tuple[Snapshot, PolicyState, Config, str, DomainStats],
) -> None:
    """Whatever one guest reports, every other guest grows at least what it grows when that guest reports nothing,
    less that guest's weight share of what the host has above its guard, and less a move for each guest: shares
    too small to move go to the guests that want more, and the guest claiming to want the most can collect them
    (with 48 MiB above the guard and two guests starving, one of them gets all 48, each being owed 24, and
    whichever it is, the other could be the liar). Over ticks, a claim the host belies loses those shares:
    test_policy_adversary's scarce-budget test."""
    snapshot, state, config, name, liar = case
    silent = replace(liar, unused_kib=None, usable_kib=None, available_kib=None, last_update_s=None)

    def growth(adversary: DomainStats) -> dict[str, int]:
        doms = tuple(adversary if d.name == name else d for d in snapshot.domains)
        plan, _ = decide(replace(snapshot, domains=doms), state, config)
        return {c.domain: max(0, c.delta_kib) for c in plan.changes}

    with_liar, without = growth(liar), growth(silent)
    managed = [d for d in snapshot.domains if config.manages(d.name)]
    weights = {d.name: config.weight(d.name) for d in managed}
    above_guard_kib = max(0, snapshot.host.available_kib - mib_to_kib(config.host.min_available_mib))
    share_kib = above_guard_kib * weights[name] // sum(weights.values())
    for d in managed:
        if d.name != name:
            assert with_liar.get(d.name, 0) >= without.get(d.name, 0) - share_kib - len(managed) * MIN_MOVE_KIB, d.name


@SETTINGS
@given(cases())
def test_disabled_and_unmatched_guests_are_never_in_a_plan(case: tuple[Snapshot, PolicyState, Config]) -> None:
    snapshot, state, config = case
    plan, next_state = decide(snapshot, state, config)
    for d in snapshot.domains:
        override = config.domains.get(d.name)
        disabled = override is not None and not override.enabled
        matched = any(fnmatch.fnmatchcase(d.name, p) for p in config.libvirt.domains)
        if disabled or not matched:
            assert d.name not in {c.domain for c in plan.changes}
            assert d.name not in plan.classes
            assert d.name not in next_state.samples


@SETTINGS
@given(cases(), st.randoms(use_true_random=False))
def test_decisions_do_not_depend_on_domain_order(case: tuple[Snapshot, PolicyState, Config], rnd) -> None:
    snapshot, state, config = case
    shuffled = list(snapshot.domains)
    rnd.shuffle(shuffled)
    plan_a, state_a = decide(snapshot, state, config)
    plan_b, state_b = decide(replace(snapshot, domains=tuple(shuffled)), state, config)
    assert plan_a == plan_b
    assert state_a == state_b


@SETTINGS
@given(
    st.integers(512, 8192),
    st.integers(0, 1000),
    st.integers(1, 3),
    st.integers(0, 3),
)
def test_a_sample_already_seen_is_not_reclaimed_again(current_mib: int, extra_mib: int, gap_s: int, ticks: int) -> None:
    """Ticks on one guest sample (its stats not refreshed in between): at most one reclaim for it.

    A later tick has no new information about the guest: reclaiming again would act on numbers that the first
    reclaim already made wrong. It is how a guest whose stats stop updating gets drained step after step
    before its stats are old enough to count as stale.
    """
    config = Config()
    _starving_kib, wasteful_kib, _step_kib = thresholds_kib(config, 16384 * MIB)
    unused_kib = min(current_mib * MIB, wasteful_kib + extra_mib * MIB)
    assume(unused_kib >= wasteful_kib + MIN_MOVE_KIB)  # a move worth making
    dom = DomainStats("vm1", current_mib * MIB, 16384 * MIB, unused_kib, unused_kib, None, current_mib * MIB, 999_990)
    host = HostStats(available_kib=4096 * MIB, total_kib=16384 * MIB)
    earlier = replace(dom, last_update_s=dom.last_update_s - gap_s)
    _plan, state = decide(Snapshot(host, (earlier,), 999_990.0 - gap_s), PolicyState(), config)
    plan, state = decide(Snapshot(host, (dom,), 999_990.5), state, config)
    assert [c.action for c in plan.changes] == ["reclaim"]
    current_kib = plan.changes[0].to_kib
    for i in range(1, ticks + 2):
        # The balloon moved as asked; the guest's stats did not refresh (same last-update).
        dom = replace(dom, current_kib=current_kib)
        plan, state = decide(Snapshot(host, (dom,), 999_990.5 + i), state, config)
        assert not [c for c in plan.changes if c.delta_kib < 0], plan


# -- the simulator over many ticks ---------------------------------------------------------------------------


@st.composite
def sim_hosts(draw: st.DrawFn) -> tuple[SimulatedHypervisor, Config, set[str]]:
    config = Config.model_validate(
        {
            "guest": {"min_mib": draw(st.integers(128, 512))},
            "host": {"min_available_mib": draw(st.integers(0, 2048))},
        }
    )
    guests, idle = [], set()
    for i in range(draw(st.integers(1, 5))):
        max_kib = mib_to_kib(draw(st.sampled_from([1024, 2048, 4096])))
        start_kib = draw(st.integers(config.guest.min_mib * MIB, max_kib))
        kind = draw(st.sampled_from(["idle", "resident", "hog", "hold"]))
        name = f"g{i}"
        if kind == "idle":
            workload = Idle()
        elif kind == "resident":
            # An idle guest with a resident program: it fits in the guest's floor minus the kernel.
            used_kib = draw(st.integers(0, max(0, config.floor_kib(name, max_kib) - KERNEL_USED_KIB - 8 * MIB)))
            used_kib = min(used_kib, start_kib - KERNEL_USED_KIB - 8 * MIB)
            workload = Idle(used_kib=max(0, used_kib))
        elif kind == "hog":
            workload = Hog(
                rate_kib_per_s=mib_to_kib(draw(st.integers(1, 60))), start_s=1_000_000.0 + draw(st.integers(0, 60))
            )
        else:
            workload = Hog(
                rate_kib_per_s=mib_to_kib(draw(st.integers(1, 30))),
                limit_kib=mib_to_kib(draw(st.integers(10, 400))),
                free_s=1_000_000.0 + draw(st.integers(30, 200)),
            )
        if kind in ("idle", "resident"):
            idle.add(name)
        guests.append(SimGuest(name, max_kib=max_kib, target_kib=start_kib, workload=workload))
    host_total_kib = mib_to_kib(draw(st.integers(2048, 16384)))
    return SimulatedHypervisor(guests, host_total_kib=host_total_kib), config, idle


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sim_hosts(), st.sampled_from([0.5, 1.0, 1.5]))
def test_simulated_idle_guests_survive_many_ticks(host: tuple[SimulatedHypervisor, Config, set[str]], dt_s) -> None:
    sim, config, idle = host
    state = PolicyState()
    floors = {g.name: config.floor_kib(g.name, g.max_kib) for g in sim.guests.values()}
    for _tick in range(300):
        snapshot = sim.sample()
        sim.ensure_stats_period([d.name for d in snapshot.domains], config.loop.stats_period_s)
        plan, state = decide(snapshot, state, config)
        results = sim.apply(plan.changes)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        for g in sim.guests.values():
            assert g.target_kib >= min(floors[g.name], g.max_kib), (g.name, g.target_kib)
            assert g.target_kib <= g.max_kib
        sim.advance(dt_s)
    for name in idle:
        assert sim.guests[name].oom_kills == 0, f"idle guest {name} was OOM-killed"
