"""Each special case of the policy, and the test that fails without it.

The policy is a model (sanitize -> bands -> budget -> allocate), but real guests taught it cases the model alone
does not cover: a balloon's move read as use, a report from before a lowering, a grant taken back before it is
used. Each stays only as a named step with a test that fails without it. A row here names the case, why it is
there, the code in src/memcoord/core/policy.py that makes it, what that code becomes with the case taken out, and
the test that must then fail. The taken-out policy runs in a child process on a copy of the package.

A row whose code is no longer in policy.py fails with its name: whoever rewrites a special case says here what
it became, and which test still pins it. A case no test pins is either redundant (take it out) or untested (write
the test first).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers.repo import REPO

POLICY = REPO / "src" / "memcoord" / "core" / "policy.py"


class Case(NamedTuple):
    name: str
    why: str
    code: str
    without: str
    test: str


# fmt: off
CASES = (
    Case("balloon-move-is-not-use",
         "without the guest's own total, a balloon move between two reports would read as use",
         "reads_use = (by_total or not moved) and not total_lags and not inflated",
         "reads_use = not total_lags and not inflated",
         "test_policy.py::test_a_guest_whose_balloon_is_still_moving_is_not_grown_again"),
    Case("deflate-on-oom-total-lags",
         "a deflate-on-OOM guest's total is taken at balloon.current, a second behind its own report",
         "reads_use = (by_total or not moved) and not total_lags and not inflated",
         "reads_use = (by_total or not moved) and not inflated",
         "test_policy.py::test_a_deflate_on_oom_guest_whose_report_sees_a_grow_before_libvirt_does_is_not_grown_again"),
    Case("inflating-balloon-drops-cache",
         "an inflating balloon makes the kernel drop page cache: MemAvailable falls by more than the balloon took",
         "reads_use = (by_total or not moved) and not total_lags and not inflated",
         "reads_use = (by_total or not moved) and not total_lags",
         "test_policy.py::test_a_balloon_that_inflated_between_two_reports_is_not_read_as_a_ramp"),
    Case("kernel-share-from-a-report-at-rest",
         "libvirt's balloon size lags the guest's report while it moves",
         "    if moved or pending is not None:\n        kernel_kib = prev.kernel_kib\n",
         "",
         "test_policy.py::test_a_report_taken_while_the_balloon_inflates_does_not_undo_the_lowering"),
    Case("ramp-remembered",
         "a program allocating in spurts: one quiet report does not end its ramp",
         "ramp_kib_per_s = max(rate_kib_per_s, prev.ramp_kib_per_s * RAMP_DECAY, 0.0)",
         "ramp_kib_per_s = max(rate_kib_per_s, 0.0)",
         "test_policy.py::test_a_ramp_that_pauses_for_one_report_still_has_room_made_for_it"),
    Case("pending-believed-after-stale-time",
         "a guest that will not give pages leaves memcoord's target unreached forever",
         "        if arrived or expired or pending.overtaken(dom.current_kib):",
         "        if arrived or pending.overtaken(dom.current_kib):",
         "test_policy.py::test_a_balloon_that_never_arrives_is_believed_after_the_stale_time"),
    Case("pending-overtaken",
         "a balloon set elsewhere (virsh setmem, deflate on OOM) is not heading to memcoord's target",
         "        if arrived or expired or pending.overtaken(dom.current_kib):",
         "        if arrived or expired:",
         "test_policy.py::test_a_balloon_set_elsewhere_is_not_taken_for_memcoords_target"),
    Case("pending-chain-keeps-its-start",
         "a second grow on the way keeps where the balloon set out from",
         "prev.from_kib if prev is not None and same_way else c.from_kib",
         "c.from_kib",
         "test_policy.py::test_a_second_grow_on_the_way_is_not_taken_for_a_balloon_set_elsewhere"),
    Case("report-from-before-a-lowering",
         "a report from the size a moving balloon had is possible: bounded at the maximum",
         "refused = refusal(dom, moving) if",
         "refused = refusal(dom, False) if",
         "test_policy_adversary.py::test_a_report_from_the_size_before_memcoords_lowering_is_a_sane_sample"),
    Case("late-stats-grown-on-projection",
         "a busy guest's stats come late: its ramp is a reason to grow",
         "g.late = not fresh and age_s <= clock.silence_s and ramp_kib_per_s > 0 and base_kib <= need_kib",
         "g.late = False",
         "test_policy.py::test_late_stats_of_a_ramping_guest_are_a_reason_to_grow"),
    Case("late-guest-grows-only-to-its-low",
         "a guest grown on its projection gets no grow step beyond it: the grant is bounded",
         "base_kib + (grow_step_kib if fresh else 0)",
         "base_kib + grow_step_kib",
         "test_policy_adversary.py::test_a_silent_guests_grant_on_extrapolation_is_bounded"),
    Case("settle-after-a-lowering",
         "figures from just after a lowering may predate the balloon's arrival",
         "sample.last_update_s >= lowered_at_s + SETTLE_S",
         "sample.last_update_s >= lowered_at_s",
         "test_policy.py::test_no_second_reclaim_on_figures_from_before_the_balloon_arrived"),
    Case("recent-peak-expires",
         "the production profile holds a guest's peak for peak_hold_s, not for ever",
         "if used_kib >= peak_used_kib or dom.last_update_s - peak_at_s > peak_hold_s:",
         "if used_kib >= peak_used_kib:",
         "test_policy.py::test_the_peak_floor_stops_reclaim_at_the_peak"),
    Case("guard-holds-a-ramping-guests-untouched-memory",
         "on real guests four ramping hogs took the host 246 MiB below its guard when only their reach was held",
         "return min(unbacked_kib, max(grant_kib, touch_kib))",
         "return min(grant_kib, unbacked_kib)",
         "test_policy.py::test_the_guard_holds_all_a_ramping_guest_has_never_touched"),
    Case("a-lowering-keeps-the-ramps-hold",
         "a ramping guest's never-backed surplus, given, took the hold for its ramp down too: a neighbour grew into it",
         "            held_kib = max(held_kib, min(g.touch_kib, unbacked_kib, g.held_kib))",
         "            pass",
         "test_policy.py::test_a_ramping_guest_that_gives_keeps_the_hold_for_what_its_ramp_will_touch"),
    Case("guard-holds-a-ramp-only-as-far-as-it-goes",
         "a 16 GiB guest growing 2 MiB/s held 14 GiB from a neighbour that ran out of memory on a roomy host",
         "return min(unbacked_kib, max(grant_kib, touch_kib))",
         "return unbacked_kib if touch_kib else min(grant_kib, unbacked_kib)",
         "test_policy.py::test_a_slow_ramp_holds_only_what_it_reaches_in_ramp_hold_s_and_a_starving_neighbour_grows"),
    Case("clock-step-starts-a-guests-history-again",
         "once the wall clock stepped back, each later report looked older than the last and was ignored for hours",
         "    if prev is not None and dom.last_update_s < prev.last_update_s - stale_s:\n        # Stamped",
         "    if False:\n        # Stamped",
         "test_policy.py::test_after_the_wall_clock_steps_back_a_guests_new_reports_are_read"),
    Case("clock-step-shorter-than-the-stale-time",
         "a 2 s step back made every guest forget its history, and the production profile its recent peak",
         "dom.last_update_s < prev.last_update_s - stale_s:",
         "dom.last_update_s < prev.last_update_s:",
         "test_policy.py::test_a_clock_step_back_shorter_than_the_stale_time_forgets_nothing"),
    Case("clock-step-takes-a-lowering-as-now",
         "a guest lowered just before a clock step back could not give again for as long as the step",
         "lowered_at_s=no_later(state.lowered_at_s),",
         "lowered_at_s=state.lowered_at_s,",
         "test_policy.py::test_after_a_clock_step_back_a_guest_lowered_or_raised_before_it_waits_as_long_as_ever"),
    Case("clock-step-takes-a-raise-as-now",
         "a guest raised just before a clock step back could not be reclaimed for as long as the step",
         "raised_at_s=no_later(state.raised_at_s),",
         "raised_at_s=state.raised_at_s,",
         "test_policy.py::test_after_a_clock_step_back_a_guest_lowered_or_raised_before_it_waits_as_long_as_ever"),
    Case("clock-step-keeps-pending-targets",
         "forgotten across a clock step, a raise on its way was held by nothing and went to a neighbour too",
         "pending={n: replace(p, set_at_s=min(p.set_at_s, now_s)) for n, p in state.pending.items()},",
         "pending={n: p for n, p in state.pending.items() if p.set_at_s <= now_s},",
         "test_policy.py::test_a_clock_step_back_keeps_what_the_guard_holds_for_a_raise_on_its_way"),
    Case("last-step-to-the-ceiling",
         "a starving guest less than a worthwhile move below its ceiling was never grown to it",
         "return self.move(g, start_kib + got_kib, rule, 0 if to_ceiling else least_kib)",
         "return self.move(g, start_kib + got_kib, rule, least_kib)",
         "test_policy.py::test_a_starving_guest_a_little_below_its_ceiling_is_grown_to_it"),
    Case("at-the-ceiling-within-the-settled-tolerance",
         "a balloon QEMU left a few pages short of the ceiling was moved 2 MiB every tick",
         "to_ceiling = start_kib + got_kib == g.band.ceiling_kib and got_kib > SETTLED_TOLERANCE_KIB",
         "to_ceiling = start_kib + got_kib == g.band.ceiling_kib",
         "test_policy.py::test_a_starving_guest_a_little_below_its_ceiling_is_grown_to_it"),
    Case("grant-released-once-steady",
         "a guest steady again is not growing into its grant: the guard stops holding it",
         "            grant_kib = 0\n        if grant_kib > 0:",
         "            pass\n        if grant_kib > 0:",
         "test_policy.py::test_a_grant_is_dropped_once_the_guest_is_steady"),
    Case("starving-grows-from-its-balloon",
         "a deflate-on-OOM guest may be above memcoord's pending lowering: a grow never inflates it",
         "start_kib = max(g.target_kib, g.dom.current_kib) if g.guest_class is GuestClass.STARVING else g.target_kib",
         "start_kib = g.target_kib",
         "test_policy_adversary.py::test_a_grow_never_lowers_a_deflate_on_oom_guests_balloon"),
    Case("given-nothing-keeps-the-lowering",
         "a starving guest's share of less than a MiB does not undo a lowering on its way",
         "        if got_kib < KIB_PER_MIB:  # given nothing, a lowering on its way is not undone either\n"
         "            return 0\n",
         "",
         "test_policy.py::test_a_starving_guest_given_nothing_keeps_the_lowering_on_its_way"),
    Case("ceiling-waits-for-need",
         "a ceiling lowered under what the programs use waits until they free it",
         "                stop_kib = max(g.band.ceiling_kib, g.need_kib)\n",
         "                stop_kib = g.band.ceiling_kib\n",
         "test_policy.py::test_a_lowered_ceiling_never_takes_a_guest_below_its_low"),
    Case("production-reclaims-below-its-comfort-target",
         "the production profile keeps idle memory while the host is comfortable",
         "plan.reclaim(not target_kib or snapshot.host.available_kib < target_kib or starving)",
         "plan.reclaim(True)",
         "test_policy.py::test_production_profile_keeps_idle_memory_while_the_host_is_comfortable"),
    Case("relief-counts-memory-on-its-way",
         "a lowering whose balloon has not moved yet is memory coming back: relief does not take it twice",
         "        need_kib -= sum(_backed_above_kib(g, g.base_kib, config) for g in guests if g.base_kib < g",
         "        need_kib -= 0 * sum(_backed_above_kib(g, g.base_kib, config) for g in guests if g.base_kib < g",
         "test_policy.py::test_relief_waits_for_memory_already_on_its_way_back"),
    Case("reclaim-once-per-sample",
         "never twice on one set of figures",
         "                and g.new_sample\n                and g.settled\n",
         "                and g.settled\n",
         "test_properties.py::test_a_sample_already_seen_is_not_reclaimed_again"),
    Case("reclaim-spares-the-just-raised",
         "taking a grant back before it is used makes the two ping-pong",
         "                and not g.just_raised\n            ):",
         "            ):",
         "test_policy.py::test_a_guest_memcoord_just_raised_is_not_reclaimed_on_its_first_quiet_reports"),
    Case("last-reclaim-step-to-the-floor",
         "a high pinned at the floor is configuration: hysteresis would leave the guest short of it",
         "least_kib = 0 if g.band.high_kib == g.band.floor_kib else min(MIN_MOVE_KIB, step_kib)",
         "least_kib = min(MIN_MOVE_KIB, step_kib)",
         "test_policy.py::test_the_last_reclaim_step_to_a_floor_is_made_whatever_its_size"),
    Case("surplus-refilled",
         "what donors give back at once (untouched grants) goes to the starving in the same tick",
         '_Source("low", _Giver(Rule.SURPLUS, "high"), "budget")',
         '_Source("low", _Giver(Rule.SURPLUS, "high"), None)',
         "test_policy.py::test_a_busy_guest_far_above_its_needs_gives_to_a_starving_one_the_host_cannot_feed"),
    Case("lend-what-the-guard-holds",
         "the guard's hold for others' grants beyond their survival may come later or never; an OOM kill comes now",
         '    _Source("survive", None, "lent"),',
         "",
         "test_policy.py::test_a_guest_about_to_run_out_is_lent_what_the_guard_holds_back_for_others"),
    Case("a-guest-that-does-not-ramp-lends-its-grant",
         "a big guest below its percentage starving line with hundreds of MiB free held its grant while a neighbour "
         "ran out",
         " or not g.reach_kib",
         "",
         "test_policy.py::test_a_guest_below_its_low_that_does_not_ramp_lends_the_grant_it_will_not_touch"),
    Case("loans-under-pressure",
         "PSI can be high with GiBs above the guard: a guest ramping 60 MiB/s was OOM-killed while nobody grew",
         '        plan.lend_room(plan.unmet_kib("survive"))\n',
         "        pass\n",
         "test_host_pressure.py::test_under_pressure_a_guest_short_of_lasting_is_lent_from_the_hosts_room"),
    Case("relief-a-step-a-tick-from-a-guest-counted-by-its-total",
         "waiting for a report from after each lowering kept a host 700 MiB below its guard for 9 s on real guests",
         ' or (for_host and line == "high" and g.steady_by_total and not g.behind(step_kib))',
         "",
         "test_policy.py::test_relief_asks_a_guest_whose_use_its_own_total_counts_a_step_a_tick"),
    Case("lend-room-whatever-its-size",
         "a guest growing 10 MiB/s lacks less than a move worth making until it has no time left (accelerating-ramp)",
         '    _Source("survive", None, "room"),',
         "",
         "test_policy.py::test_a_guest_short_of_lasting_until_memcoord_acts_again_is_lent_it_though_less_than_a_move_worth_making"),
    Case("room-leaves-what-ramps-reach",
         "lending what ramps touch before memcoord can act again crossed the guard (fleet-50 500 seeds: 79 s, not 6)",
         "near_kib = sum(min(self._held(g), g.reach_kib) for g in self.guests)",
         "near_kib = 0",
         "test_policy.py::test_what_ramps_reach_before_memcoord_acts_again_is_not_lent"),
    Case("room-lends-all-a-guest-lacks-or-nothing",
         "part of what a guest lacks to last buys a setMemory, not the time: 40 guests each got 8 of 28 MiB",
         "            if whole:\n",
         "            if False:\n",
         "test_policy.py::test_a_guest_short_of_lasting_is_lent_all_it_lacks_or_nothing"),
    Case("room-lends-a-move-worth-making",
         "a guest growing 3 MiB/s was lent 3 MiB on 32 ticks in a row (a setMemory and a journal line each)",
         "        self.fill(top_ups_kib, Rule.LENT, self.room_kib(), beyond_budget=True, least_kib=0)\n",
         "",
         "test_policy.py::test_a_guest_short_of_lasting_until_memcoord_acts_again_is_lent_it_though_less_than_a_move_worth_making"),
    Case("no-pool-share-right-after-a-lowering",
         "on real guests a just-lowered guest's stats lagged its balloon and the pool grew it back (1174 -> 1074 -> "
         "1174, again); over simulator seeds 1-12 the production profile's fleet-50 loses a guest more without it",
         " and g.name not in state.lowered_at_s and g.rule is None",
         " and g.rule is None",
         "test_policy.py::test_a_guest_just_lowered_gets_no_share_of_the_pool"),
    Case("givers-keep-a-grant-being-grown-into",
         "taking a grant back before it is used makes the two ping-pong, and the giver is the next to run out",
         "(for_host or (g.rule is None and not g.still_growing))",
         "(for_host or g.rule is None)",
         "test_policy.py::test_a_guest_memcoord_is_still_growing_keeps_its_grant_for_itself"),
    Case("others-page-cache-toward-the-low",
         "a reader kept its cache while its neighbour's process was OOM killed (real guests)",
         '    _Source("low", _Giver(Rule.COMFORT, "low", cache_only=True), None),',
         "",
         "test_policy.py::test_page_cache_others_hold_goes_to_a_guest_below_its_low_when_the_host_has_nothing"),
    Case("tax-no-more-than-fits",
         "idle guests do not pay for what the grown guest has no room for",
         "payable_kib = min(self._above_guard_kib(), sum(w for w in wants_kib.values() if w >= KIB_PER_MIB))",
         "payable_kib = self._above_guard_kib()",
         "test_policy.py::test_no_tax_is_taken_that_the_grown_guest_has_no_room_for"),
    Case("tax-stops-half-way",
         "a tax, not a drain: the idle guest keeps room for its own next burst",
         "middle_kib = (g.band.low_kib + g.band.high_kib) // 2",
         "middle_kib = g.band.low_kib",
         "test_policy.py::test_the_tax_leaves_an_idle_guest_half_way_between_its_lines"),
    Case("tax-spares-the-just-raised",
         "what a guest was just given for its own need is not taxed back",
         "g.rule is None and not g.just_raised:\n                middle_kib",
         "g.rule is None:\n                middle_kib",
         "test_policy.py::test_a_guest_memcoord_just_raised_pays_no_tax"),
    Case("no-progress-balloon",
         "a balloon that did not move was asked first again every stale time: the host stayed below its guard",
         "and abs(dom.current_kib - pending.from_kib) <= SETTLED_TOLERANCE_KIB:",
         "and False:",
         "test_no_progress.py::test_a_balloon_that_does_not_move_is_not_asked_again_while_another_guest_can_give"),
    Case("no-progress-refused",
         "a guest whose lowering the hypervisor refuses was asked first again every tick, and nobody else",
         "            no_progress_at_s[name] = now_s\n",
         "            pass\n",
         "test_no_progress.py::test_a_guest_whose_lowering_is_refused_is_asked_again_only_after_the_pause"),
    Case("one-refusal-is-no-evidence",
         "one passing refusal made a neighbour give its buffer, and its next burst killed a process in it",
         "        if refusals[name][1] >= REFUSALS_TO_BALK:",
         "        if refusals[name][1] >= 1:",
         "test_no_progress.py::test_one_passing_refusal_costs_a_neighbour_nothing"),
    Case("no-progress-only-on-an-accepted-lowering",
         "a call of unknown outcome may never have reached QEMU: a libvirtd restart made every guest balk",
         "lowering = pending.confirmed and pending.target_kib < pending.from_kib",
         "lowering = pending.target_kib < pending.from_kib",
         "test_no_progress.py::test_a_lowering_of_unknown_outcome_that_its_balloon_does_not_follow_makes_no_guest_balk"),
    Case("balkers-relieve-last",
         "a balloon that did not move, far above its high, was asked before another guest's memory above its low",
         'for who in ("others", "balkers"):',
         'for who in ("all",):',
         "test_no_progress.py::test_a_balloon_that_does_not_move_is_not_asked_again_while_another_guest_can_give"),
)
# fmt: on


def test_each_case_has_its_own_name_and_test():
    assert len({c.name for c in CASES}) == len(CASES)
    for c in CASES:
        path, _, test = c.test.partition("::")
        assert f"def {test}(" in (REPO / "tests" / "unit" / path).read_text(), f"{c.name}: no {c.test}"


def _pytest(package: Path, *tests: str) -> subprocess.CompletedProcess[str]:
    """The named tests in a child process on the package copy. Without CI in its environment: a skipped test is a
    pass there, never taken for a failure."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PYTHONPATH=f"{package}{os.pathsep}{REPO}", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line", "--hypothesis-seed=0",
         *(f"tests/unit/{t}" for t in tests)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package, on which every case's test passes as it is."""
    root = tmp_path_factory.mktemp("without")
    shutil.copytree(REPO / "src" / "memcoord", root / "memcoord", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{REPO}"}
    which = subprocess.run(
        [sys.executable, "-c", "import memcoord.core.policy as p; print(p.__file__)"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert which.stdout.strip().startswith(str(root)), which.stdout  # the copy, not the installed package
    run = _pytest(root, *sorted({c.test for c in CASES}))
    assert run.returncode == 0, f"the cases' tests fail on the package as it is:\n{run.stdout[-3000:]}"
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_case_is_pinned_by_its_test(case: Case, package_copy: Path):
    source = POLICY.read_text()
    assert source.count(case.code) == 1, (
        f"{case.name}: its code is no longer (once) in {POLICY.relative_to(REPO)}; say here what it became"
    )
    policy = package_copy / "memcoord" / "core" / "policy.py"
    policy.write_text(source.replace(case.code, case.without))
    try:
        run = _pytest(package_copy, case.test)
    finally:
        policy.write_text(source)
    assert run.returncode == 1, f"{case.name}: {case.test} passes without the case ({case.why})\n{run.stdout[-2000:]}"
    # It fails where the test checks the policy's decision, not on an error inside the edited package.
    where = re.findall(r"^(\S+\.py):\d+: ", run.stdout, flags=re.MULTILINE)
    assert where and all("/tests/unit/" in w for w in where), f"{case.name}: failed elsewhere:\n{run.stdout[-2000:]}"
