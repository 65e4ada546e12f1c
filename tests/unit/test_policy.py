"""Every rule of the seed policy, and every C bug it must not copy, on hand-made snapshots."""

from __future__ import annotations

from memcoord.config import Config, parse
from memcoord.model import Action, DomainStats, GuestClass, HostStats, Snapshot, mib_to_kib
from memcoord.policy import PolicyState, applied, decide

GIB_KIB = mib_to_kib(1024)
NOW_S = 10_000


def dom(
    name: str,
    current_mib: int,
    unused_mib: int | None,
    *,
    max_mib: int = 2048,
    last_s: int = NOW_S,
    rss_mib: int | None = None,
) -> DomainStats:
    return DomainStats(
        name=name,
        current_kib=mib_to_kib(current_mib),
        max_kib=mib_to_kib(max_mib),
        unused_kib=None if unused_mib is None else mib_to_kib(unused_mib),
        usable_kib=None if unused_mib is None else mib_to_kib(unused_mib),
        rss_kib=mib_to_kib(current_mib if rss_mib is None else rss_mib),
        last_update_s=last_s if unused_mib is not None else None,
    )


def snap(*doms: DomainStats, available_mib: int = 16384, now_s: float = NOW_S) -> Snapshot:
    return Snapshot(HostStats(mib_to_kib(available_mib), 24 * GIB_KIB), tuple(doms), now_s)


def two_ticks(first: Snapshot, second: Snapshot, config: Config | None = None):
    """Decide on `first` to build history, then on `second`; returns the second plan."""
    config = config or Config()
    _plan, state = decide(first, PolicyState(), config)
    plan, _state = decide(second, state, config)
    return plan


def steady(*doms: DomainStats, available_mib: int = 16384, config: Config | None = None):
    """The same guests seen twice, one second apart, with unchanged stats."""
    later = tuple(_bump(d) for d in doms)
    return two_ticks(
        snap(*doms, available_mib=available_mib, now_s=NOW_S),
        snap(*later, available_mib=available_mib, now_s=NOW_S + 1),
        config,
    )


def _bump(d: DomainStats) -> DomainStats:
    fields = {f: getattr(d, f) for f in DomainStats.__slots__}
    if d.last_update_s is not None:
        fields["last_update_s"] = d.last_update_s + 1
    return DomainStats(**fields)


def by_name(plan):
    return {c.domain: c for c in plan.changes}


def test_starving_guest_grows_one_step_from_the_host():
    plan, _ = decide(snap(dom("a", 512, 100)), PolicyState(), Config())
    assert plan.classes["a"] is GuestClass.STARVING
    (change,) = plan.changes
    assert (change.action, change.from_kib, change.to_kib) == (Action.GROW, mib_to_kib(512), mib_to_kib(812))


def test_starving_threshold_is_inclusive():
    plan, _ = decide(snap(dom("a", 512, 150)), PolicyState(), Config())
    assert plan.classes["a"] is GuestClass.STARVING


def test_first_sight_of_a_wasteful_guest_is_not_reclaimed():
    plan, _ = decide(snap(dom("a", 1024, 800)), PolicyState(), Config())
    assert plan.classes["a"] is GuestClass.BUSY
    assert plan.changes == ()


def test_wasteful_idle_guest_gives_back_one_reclaim_step():
    plan = steady(dom("a", 1024, 800))
    assert plan.classes["a"] is GuestClass.WASTEFUL
    (change,) = plan.changes
    assert change.action is Action.RECLAIM
    assert change.from_kib - change.to_kib == mib_to_kib(100)


def test_busy_guest_is_never_reclaimed_even_far_above_wasteful():
    plan = two_ticks(snap(dom("a", 2048, 1900)), snap(dom("a", 2048, 1700, last_s=NOW_S + 1), now_s=NOW_S + 1))
    assert plan.classes["a"] is GuestClass.BUSY
    assert plan.changes == ()


def test_unused_moving_with_the_balloon_counts_as_steady():
    """After memcoord reclaimed 100 MiB, unused fell by 100 MiB too: the guest did nothing, it is still idle."""
    plan = two_ticks(snap(dom("a", 1024, 800)), snap(dom("a", 924, 700, last_s=NOW_S + 1), now_s=NOW_S + 1))
    assert plan.classes["a"] is GuestClass.WASTEFUL
    assert by_name(plan)["a"].to_kib == mib_to_kib(824)


def test_a_repeated_sample_is_not_new_evidence():
    """Stats with the same last-update are the same sample: history is not advanced by a fast tick."""
    config = Config()
    _p, state = decide(snap(dom("a", 1024, 800)), PolicyState(), config)
    plan, state2 = decide(snap(dom("a", 1024, 800), now_s=NOW_S + 0.5), state, config)
    assert plan.classes["a"] is GuestClass.BUSY
    assert state2.samples == state.samples


def test_reclaimed_memory_goes_to_the_starving_first_then_to_the_busy():
    first = snap(dom("w", 1024, 800), dom("s", 512, 300), dom("b", 512, 300))
    second = snap(
        dom("w", 1024, 800, last_s=NOW_S + 1),
        dom("s", 512, 100, last_s=NOW_S + 1),
        dom("b", 512, 250, last_s=NOW_S + 1),
        now_s=NOW_S + 1,
    )
    config = parse("[host]\nmin_available_mib = 0\n[guest]\ngrow_step_mib = 60\nidle_tax_mib = 0\n")
    plan = two_ticks(first, second, config)
    changes = by_name(plan)
    assert plan.classes == {"w": GuestClass.WASTEFUL, "s": GuestClass.STARVING, "b": GuestClass.BUSY}
    assert changes["w"].delta_kib == -mib_to_kib(100)
    assert changes["s"].delta_kib == mib_to_kib(60)
    assert changes["b"].delta_kib == mib_to_kib(40)  # the remainder of the pool, not more


def test_busy_guests_get_nothing_from_the_host():
    plan = two_ticks(snap(dom("b", 512, 300)), snap(dom("b", 512, 250, last_s=NOW_S + 1), now_s=NOW_S + 1))
    assert plan.classes["b"] is GuestClass.BUSY
    assert plan.changes == ()


def test_idle_guests_pay_the_tax_when_a_starving_guest_grows_and_it_goes_to_the_starving():
    """The C original gave the tax only when more than one guest paid; one payer is enough here."""
    first = snap(dom("i", 1024, 250), dom("s", 512, 300))
    second = snap(dom("i", 1024, 250, last_s=NOW_S + 1), dom("s", 512, 100, last_s=NOW_S + 1), now_s=NOW_S + 1)
    changes = by_name(two_ticks(first, second))
    assert changes["i"].action is Action.TAX
    assert changes["i"].delta_kib == -mib_to_kib(2)
    assert changes["s"].delta_kib == mib_to_kib(302)


def test_no_tax_when_nobody_grows():
    plan = steady(dom("i", 1024, 250))
    assert plan.classes["i"] is GuestClass.IDLE
    assert plan.changes == ()


def test_reclaim_adds_the_step_to_the_pool_not_half_the_guest():
    """The C original added half the reclaimed guest's memory to the pool."""
    first = snap(dom("w", 2048, 1800), dom("b", 512, 300))
    second = snap(dom("w", 2048, 1800, last_s=NOW_S + 1), dom("b", 512, 250, last_s=NOW_S + 1), now_s=NOW_S + 1)
    changes = by_name(two_ticks(first, second, parse("[host]\nmin_available_mib = 0\n")))
    assert changes["b"].delta_kib == mib_to_kib(100)


def test_grow_never_exceeds_the_guest_maximum():
    plan, _ = decide(snap(dom("a", 1948, 50, max_mib=2048)), PolicyState(), Config())
    assert by_name(plan)["a"].to_kib == mib_to_kib(2048)


def test_guest_at_its_maximum_is_not_grown():
    plan, _ = decide(snap(dom("a", 2048, 50, max_mib=2048)), PolicyState(), Config())
    assert plan.changes == ()


def test_reclaim_stops_at_the_floor():
    config = parse("[guest]\nwasteful_mib = 200\n")
    changes = by_name(steady(dom("a", 300, 290), config=config))
    assert changes["a"].to_kib == mib_to_kib(256)
    assert steady(dom("a", 256, 250), config=config).changes == ()


def test_memory_reclaimed_from_touched_pages_reaches_others_only_through_the_host():
    """At the guard, a reclaim of pages QEMU holds frees host memory only once the balloon inflates: the
    pool is not handed out again in the same tick, so the host never dips below its guard meanwhile."""
    first = snap(dom("w", 2048, 1800), dom("b", 512, 300), available_mib=1024)
    second = snap(
        dom("w", 2048, 1800, last_s=NOW_S + 1),
        dom("b", 512, 250, last_s=NOW_S + 1),
        available_mib=1024,
        now_s=NOW_S + 1,
    )
    changes = by_name(two_ticks(first, second))
    assert changes["w"].delta_kib == -mib_to_kib(100)
    assert "b" not in changes


def test_per_domain_floor_and_ceiling():
    config = parse('[domains."a"]\nmin_mib = 900\n[domains."b"]\nmax_mib = 1000\n')
    plan = steady(dom("a", 1000, 800), dom("b", 1500, 400), config=config)
    changes = by_name(plan)
    assert changes["a"].to_kib == mib_to_kib(900)  # reclaim stops at the override floor
    assert (changes["b"].action, changes["b"].to_kib) == (Action.CLAMP, mib_to_kib(1400))  # one step toward 1000


def test_a_guest_below_its_floor_is_raised_to_it():
    plan, _ = decide(snap(dom("a", 200, None)), PolicyState(), Config())
    (change,) = plan.changes
    assert (change.action, change.to_kib) == (Action.CLAMP, mib_to_kib(256))


def test_host_guard_counts_all_growth_in_the_tick():
    """Two starving guests (who may still fill 50 + 60 MiB), room for 450 MiB above the guard: together they
    get 450, not 2 x 300, and evenly, not first come first served."""
    plan, _ = decide(
        snap(dom("a", 512, 50), dom("b", 512, 60), available_mib=1024 + 110 + 450), PolicyState(), Config()
    )
    assert sum(c.delta_kib for c in plan.changes) == mib_to_kib(450)
    assert by_name(plan)["a"].delta_kib == by_name(plan)["b"].delta_kib == mib_to_kib(225)
    assert plan.host_headroom_kib == 0


def test_scarce_headroom_is_shared_evenly_and_what_a_small_need_leaves_goes_to_the_others():
    """Course scenario 2 grew four hogs by 375, 375, 447 and 673 MiB when the neediest went first."""
    doms = [dom("a", 512, 50), dom("b", 512, 60), dom("c", 512, 70), dom("d", 1948, 80)]  # d: 100 MiB to its max
    plan, _ = decide(snap(*doms, available_mib=1024 + 260 + 700), PolicyState(), Config())
    changes = by_name(plan)
    assert changes["d"].delta_kib == mib_to_kib(100)
    assert changes["a"].delta_kib == changes["b"].delta_kib == changes["c"].delta_kib == mib_to_kib(200)


def test_memory_a_guest_touched_and_freed_is_not_counted_against_the_host():
    """A guest whose hog died holds 1.9 GiB free that QEMU already backs: it cannot take that from the host
    again, so it must not block another guest's growth while it waits to be reclaimed."""
    after_hog = dom("done", 2048, 1900, rss_mib=2048 + 128)
    plan, _ = decide(snap(after_hog, dom("s", 512, 50), available_mib=1024 + 50 + 300), PolicyState(), Config())
    assert by_name(plan)["s"].delta_kib == mib_to_kib(300)


def test_qemu_overhead_is_counted_for_a_guest_that_may_still_fill_up():
    """rss includes QEMU's own overhead: with 100 MiB touched and 128 MiB overhead, a 512 MiB guest at rss 228
    may take 412 MiB, not 512 - 228 = 284."""
    young = dom("y", 512, 420, rss_mib=228)
    plan, _ = decide(snap(young, dom("s", 512, 50), available_mib=1024 + 412 + 50 + 100), PolicyState(), Config())
    assert by_name(plan)["s"].delta_kib == mib_to_kib(100)


def test_host_guard_counts_memory_granted_but_not_yet_used():
    """A guest holding a 2 GiB target with only 512 MiB touched may still take 1.5 GiB from the host."""
    plan, _ = decide(
        snap(dom("big", 2048, 1500, rss_mib=512), dom("s", 512, 50), available_mib=1024 + 1500 + 50 + 100),
        PolicyState(),
        Config(),
    )
    assert by_name(plan)["s"].delta_kib == mib_to_kib(100)


def test_host_below_its_guard_grows_nobody():
    plan, _ = decide(snap(dom("a", 512, 50), available_mib=900), PolicyState(), Config())
    assert plan.changes == ()
    assert any("host guard" in note for note in plan.notes)


def test_guard_uses_the_configured_floor_not_a_fixed_80_mb():
    config = parse("[host]\nmin_available_mib = 4000\n")
    plan, _ = decide(snap(dom("a", 512, 50), available_mib=4000 + 50 + 100), PolicyState(), config)
    assert sum(c.delta_kib for c in plan.changes) == mib_to_kib(100)


def test_stale_stats_are_never_reclaimed():
    first = snap(dom("a", 2048, 1800, last_s=NOW_S - 100), now_s=NOW_S)
    second = snap(dom("a", 2048, 1800, last_s=NOW_S - 99), now_s=NOW_S + 1)
    plan = two_ticks(first, second)
    assert plan.classes["a"] is GuestClass.STALE
    assert plan.changes == ()


def test_missing_stats_are_never_touched():
    plan = steady(dom("a", 2048, None))
    assert plan.classes["a"] is GuestClass.NO_STATS
    assert plan.changes == ()


def test_disabled_and_unmatched_domains_never_appear():
    config = parse('[libvirt]\ndomains = ["web*"]\n[domains."web2"]\nenabled = false\n')
    plan = steady(dom("web1", 1024, 800), dom("web2", 1024, 800), dom("db", 1024, 800), config=config)
    assert set(plan.classes) == {"web1"}
    assert [c.domain for c in plan.changes] == ["web1"]


def test_order_of_domains_does_not_matter():
    doms = [dom("a", 512, 50), dom("b", 512, 80), dom("c", 1024, 800), dom("d", 700, 200)]
    forward = steady(*doms, available_mib=1024 + 500)
    backward = steady(*reversed(doms), available_mib=1024 + 500)
    assert forward.changes == backward.changes
    assert forward.classes == backward.classes


def test_state_forgets_domains_that_are_gone():
    config = Config()
    _p, state = decide(snap(dom("a", 1024, 800), dom("b", 1024, 800)), PolicyState(), config)
    _p, state = decide(snap(dom("a", 1024, 800, last_s=NOW_S + 1), now_s=NOW_S + 1), state, config)
    assert set(state.samples) == {"a"}


def test_a_guest_whose_balloon_is_still_moving_is_not_grown_again():
    """The simulator showed 312 -> 612, then 562 -> 864: a second grow decided while the first was on its way."""
    config = Config()
    plan, state = decide(snap(dom("a", 512, 50)), PolicyState(), config)
    state = applied(state, plan.changes, NOW_S)
    # One second later the balloon is half-way and the guest's stats still say starving.
    plan, state = decide(snap(dom("a", 662, 60, last_s=NOW_S + 1), now_s=NOW_S + 1), state, config)
    assert plan.changes == ()
    # Once it arrived, a starving guest grows again.
    plan, _ = decide(snap(dom("a", 812, 60, last_s=NOW_S + 2), now_s=NOW_S + 2), state, config)
    assert by_name(plan)["a"].to_kib == mib_to_kib(1112)


def test_the_guard_counts_a_pending_grow_at_its_target():
    """While guest a's balloon moves to 812 MiB, the host must keep those 300 MiB for it."""
    config = Config()
    plan, state = decide(snap(dom("a", 512, 50), available_mib=1024 + 50 + 400), PolicyState(), config)
    state = applied(state, plan.changes, NOW_S)
    # a's balloon is at 600 on its way to 812 and its QEMU has not touched the new memory (RSS still 512 MiB).
    a_moving = dom("a", 600, 40, last_s=NOW_S + 1, rss_mib=512)
    second = snap(a_moving, dom("b", 512, 50), available_mib=1024 + 50 + 400, now_s=NOW_S + 1)
    plan, _ = decide(second, state, config)
    # a may still take its 40 MiB free plus 212 MiB to its target; b its 50: 450 - 302 = 148 MiB for b.
    # (Counted where a's balloon is, b would get a full 300 MiB step.)
    assert by_name(plan)["b"].delta_kib == mib_to_kib(148)


def test_a_balloon_that_never_arrives_is_believed_after_the_stale_time():
    config = Config()
    plan, state = decide(snap(dom("a", 512, 50)), PolicyState(), config)
    state = applied(state, plan.changes, NOW_S)
    later_s = NOW_S + config.stale_after_s + 1
    plan, _ = decide(snap(dom("a", 600, 40, last_s=int(later_s)), now_s=later_s), state, config)
    assert by_name(plan)["a"].from_kib == mib_to_kib(600)


def test_dry_run_style_no_apply_leaves_nothing_pending():
    plan, state = decide(snap(dom("a", 512, 50)), PolicyState(), Config())
    assert plan.changes and state.pending == {}


def test_a_guest_just_lowered_gets_no_share_of_the_pool():
    """Lab scenario 2: g2 went 1174 -> 1074 -> 1174 and again, its samples lagging its own balloon."""
    config = parse("[guest]\nidle_tax_mib = 0\n")
    first = snap(dom("w", 1024, 800), dom("x", 1024, 800))
    plan, state = decide(first, PolicyState(), config)
    second = snap(dom("w", 1024, 800, last_s=NOW_S + 1), dom("x", 1024, 800, last_s=NOW_S + 1), now_s=NOW_S + 1)
    plan, state = decide(second, state, config)
    assert {c.domain for c in plan.changes} == {"w", "x"}
    state = applied(state, plan.changes, NOW_S + 1)
    # x's balloon arrived but its stats moved oddly (busy); w is still wasteful and gives a step to the pool.
    third = snap(dom("w", 924, 700, last_s=NOW_S + 2), dom("x", 924, 760, last_s=NOW_S + 2), now_s=NOW_S + 2)
    plan, _ = decide(third, state, config)
    assert plan.classes["x"] is GuestClass.BUSY
    assert "x" not in by_name(plan)


def test_scarce_headroom_keeps_a_share_for_busy_guests_that_may_starve_next():
    """Course scenario 2 on real guests: one hog's guest starved a tick after the others and found the headroom
    spent (growth 423, 422, 455, 316 MiB). A busy guest's share now waits in the headroom for it."""
    # s may still take its 100 MiB free, b 128 MiB (its free memory QEMU does not back yet): 300 MiB headroom.
    available_mib = 1024 + 100 + 128 + 300
    first = snap(dom("s", 512, 300), dom("b", 512, 300), available_mib=available_mib)
    second = snap(
        dom("s", 512, 100, last_s=NOW_S + 1),
        dom("b", 512, 200, last_s=NOW_S + 1),  # its used memory grew by 100 MiB: it may starve next
        available_mib=available_mib,
        now_s=NOW_S + 1,
    )
    plan = two_ticks(first, second)
    assert plan.classes == {"s": GuestClass.STARVING, "b": GuestClass.BUSY}
    assert by_name(plan)["s"].delta_kib == mib_to_kib(150)
    assert plan.host_headroom_kib == mib_to_kib(150)
