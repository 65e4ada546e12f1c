"""The acceptance scenarios, on 4 real QEMU guests with the real `memcoord run`.

Setup: 4 guests of 512 MiB (max 2048 MiB), memcoord with the shipped defaults
(interval 1 s). Every assertion is on the recorded timeline (libvirt's balloon sizes, the guests'
own free memory, the hogs' progress and OOM kills read from the serial consoles, the host's
available memory), never on memcoord's account of itself. Scenario 4 ("always") is checked at
the end of each of the others.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lab import analysis
from lab.image import GuestImage
from lab.session import LabRun
from lab.timeline import ACTION_EVENT
from tests.helpers.realguest import BASELINE_S, assert_always, guest_cfg, hog_state, retry_once_on_outage

pytestmark = pytest.mark.real

MAX_MIB = 2048
START_MIB = 512
NEAR_MAX_MIB = 150  # "within ~150 MiB of its max"
HOG_PAGE_US = 100  # 40 MiB/s, the fast end of the scenarios' 100-500 us: keeps them short
SHARE_FLOOR = 0.7  # scenario 2: what each guest holds when the first hog dies, at least, of an equal share
RECLAIM_DEADLINE_S = 90
HANDOUT_MIB = 1536  # scenario 2/3 host guard: what may be handed out beyond the start


def _settle_then_guard(run: LabRun, handout_mib: int) -> int:
    """Let memcoord's first reclaims of the idle guests land, then set the host guard (SIGHUP reload)
    so that about handout_mib can be handed out beyond *this* start, the one growth is measured from."""
    time.sleep(BASELINE_S)

    def quiet() -> bool:
        actions = run.timeline.events_of(ACTION_EVENT)
        return not actions or run.t_s() - actions[-1]["t_s"] >= 3

    run.wait_until(quiet, 30, "memcoord quiet after its first reclaims")
    guard_mib = run.guard_allowing_mib(handout_mib)
    run.reload_memcoord({"host": {"min_available_mib": guard_mib}})
    return guard_mib


def _new_run(prefix: str, run_dir: Path, image: GuestImage, title: str) -> LabRun:
    return LabRun(prefix, run_dir, n=4, max_mib=MAX_MIB, current_mib=START_MIB, image=image, title=title)


def test_one_grower_three_idle(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """1: the grower reaches its max, idle guests give back gradually, the grower is reclaimed after."""

    def scenario(attempt_dir: Path) -> None:
        with _new_run(lab_prefix, attempt_dir, guest_image, "1: one unbounded hog, three idle") as run:
            grower, *idle = run.lab.names
            run.start_memcoord()
            time.sleep(BASELINE_S)
            t_hog_s = run.t_s()
            run.lab.start_hog(1, "grow", page_us=HOG_PAGE_US)
            run.wait_until(lambda: hog_state(run, 1) == "killed", 240, "the grower's hog OOM killed")
            run.wait_until(
                lambda: run.latest()[grower]["current_mib"] < 1024, RECLAIM_DEADLINE_S + 10, "grower back under 1 GiB"
            )
            time.sleep(2)
        tl = run.timeline
        cfg = guest_cfg(tl)
        t_kill_s = analysis.first_event_t_s(tl, "hog_killed", grower)
        assert t_kill_s is not None, "the grower's hog was never OOM killed"
        peak_mib = analysis.peak(tl, grower, "current_mib", t_hog_s, t_kill_s)
        t_under_s = analysis.first_t_s(tl, grower, "current_mib", lambda v: v < 1024, t_kill_s)
        drops = {g: analysis.largest_drop(tl, g) for g in idle}
        end_mib = {g: analysis.value_at(tl, g, "current_mib", tl.rows[-1]["t_s"]) for g in idle}
        print(
            f"\nscenario 1: grower peak {peak_mib:.0f} MiB (hog killed at t={t_kill_s:.0f} s), under 1 GiB "
            f"{None if t_under_s is None else round(t_under_s - t_kill_s)} s later; idle guests: largest drop "
            f"{max(d.drop_mib for d in drops.values())} MiB, end at {sorted(end_mib.values())} MiB"
        )

        assert peak_mib >= MAX_MIB - NEAR_MAX_MIB, f"grower peaked at {peak_mib} MiB before its hog died"
        limit_mib = cfg["reclaim_step_mib"] + cfg["idle_tax_mib"]
        for guest in idle:
            drop = drops[guest]
            # A pair of samples further apart than the recorder's period is not judged (it could hide two
            # steps in one); with any such gap the check would pass on what it did not see.
            assert drop.gaps_skipped == 0, f"{guest}: {drop.gaps_skipped} recorder gaps not judged: it stalled"
            n_samples = len(tl.series(guest, "current_mib"))
            assert n_samples >= (tl.rows[-1]["t_s"] - t_hog_s) / 1.5, f"{guest}: {n_samples} samples, too few"
            assert drop.drop_mib <= limit_mib + 1, f"{guest} dropped {drop.drop_mib} MiB at once (t={drop.t_s} s)"
            assert end_mib[guest] < START_MIB, f"idle {guest} never gave memory back (ends at {end_mib[guest]} MiB)"
        assert t_under_s is not None and t_under_s - t_kill_s <= RECLAIM_DEADLINE_S, (
            f"grower not under 1 GiB within {RECLAIM_DEADLINE_S} s of its hog's death (at {t_under_s})"
        )
        assert_always(tl, oom_ok={grower: MAX_MIB - NEAR_MAX_MIB})

    retry_once_on_outage(scenario, run_dir)


def test_four_growers_under_host_guard(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """2: with the host guard allowing ~1.5 GiB, all four grow, none is left short of its share, the guard holds."""

    def scenario(attempt_dir: Path) -> None:
        with _new_run(lab_prefix, attempt_dir, guest_image, "2: four unbounded hogs, host guard ~1.5 GiB") as run:
            names = run.lab.names
            run.start_memcoord()
            guard_mib = _settle_then_guard(run, HANDOUT_MIB)
            t_hog_s = run.t_s()
            for i in range(1, 5):
                run.lab.start_hog(i, "grow", page_us=HOG_PAGE_US)
            run.wait_until(
                lambda: all(hog_state(run, i) == "killed" for i in range(1, 5)), 300, "all four hogs OOM killed"
            )
            cfg_reclaim_mib = run.timeline.meta["config"]["guest"]["reclaim_step_mib"]
            run.wait_until(
                lambda: all(r["current_mib"] <= START_MIB + cfg_reclaim_mib for r in run.latest().values()),
                RECLAIM_DEADLINE_S + 30,
                "every guest reclaimed after its hog died",
            )
            time.sleep(2)
        tl = run.timeline
        start_mib = {g: analysis.value_at(tl, g, "current_mib", t_hog_s) for g in names}
        # Shared under the guard while all four hogs run: once one is OOM-killed, its memory flowing to the
        # survivors is scenario 3's behaviour, and which hog dies first is a matter of a few MiB.
        kills_s = [analysis.first_event_t_s(tl, "hog_killed", g) for g in names]
        t_first_kill_s = min(t for t in kills_s if t is not None)
        growth_mib = {g: analysis.peak(tl, g, "current_mib", t_hog_s, t_first_kill_s) - start_mib[g] for g in names}
        growth_all_mib = {g: analysis.peak(tl, g, "current_mib", t_hog_s) - start_mib[g] for g in names}
        # The split is judged on what each guest held when the first hog died, the share the guard left it: a
        # guest whose noisy ramp had it grown first may peak above that for a few seconds, and what it gave back
        # before anyone died went to the others.
        held_mib = {g: analysis.value_at(tl, g, "current_mib", t_first_kill_s) - start_mib[g] for g in names}
        # Each guest held at least SHARE_FLOOR of an equal share: none was left short. Who holds more is not bounded,
        # as two of the policy's rules rightly make it uneven. A band counts its sample's age, so a guest whose
        # reports reach libvirt later in each second is held higher (CI: guest 3's stats 1.2 s old at every sample,
        # guest 1's 0.2 s; guest 3's balloon stayed at 960 MiB while guest 1's surplus went to a guest still short).
        # And what is taken for a guest still short comes from one giver after another (most page cache first, then
        # the most above its line): of two alike givers one may give all of it (a run: balloons 1042 -> 840 MiB,
        # the twin 1043 -> 999). Seven runs: the least held 86 % of an equal share in those two, 91-96 % in the
        # others; the most 121 % and 128 % in those two, 105-111 % in the others. A CI run 74 %: on the one tick the
        # last of the budget was split, guest 3's ramp read 32 MiB/s and its neighbours' 75-84 (the same hogs), so
        # it was not below its low then, and nothing was left to grow anyone for 15 s after; three runs of the same
        # policy after it 88-96 %. How a scarce budget is split among
        # guests that ask at once is pinned by test_policy.py::test_a_scarce_budget_is_split_by_weight.
        mean_mib = sum(held_mib.values()) / len(held_mib)
        least_share = min(held_mib.values()) / max(mean_mib, 1)
        # Memory handed out at each sample (the guard should bind near HANDOUT_MIB while the four hogs run) ...
        times = sorted({r["t_s"] for r in tl.rows if r["t_s"] >= t_hog_s})
        handed_out_at_mib = {
            t: sum(analysis.value_at(tl, g, "current_mib", t) - start_mib[g] for g in names) for t in times
        }
        handed_out_mib = max(handed_out_at_mib.values())
        # ... and the host's lowest available memory while the hogs ran.
        lowest = min(((t, v) for t, v in tl.host_available_mib() if t >= t_hog_s), key=lambda p: p[1])
        # The lower bound: until the first kill the hogs were stopped by the guard, not by a policy holding back.
        # What the host had above its guard when the hogs started (the room) is the growth the guard allows
        # (HANDOUT_MIB) plus the guests' own free memory that QEMU never backed, which they touch first.
        # Measured (`-k four_growers -s`, two runs of the policy before its band rewrite): 1653 and 1581 MiB
        # handed out before the first kill (108 and 103 % of HANDOUT_MIB), 91 and 82 % of the room in use by
        # then. The bounds leave the rewrite a margin: 75 % of HANDOUT_MIB, 70 % of the room. The same run with
        # every guest capped at 650 MiB ([domains."NAME"] max_mib) let all four die evenly (spread 0 %, guard
        # held) and passed every older check here; it handed out 552 MiB and used 61 % of the room.
        host_mib = tl.host_available_mib()
        room_mib = next(v for t, v in host_mib if t >= t_hog_s) - guard_mib
        left_mib = min(v for t, v in host_mib if t_hog_s <= t <= t_first_kill_s) - guard_mib
        before_kill_mib = max(v for t, v in handed_out_at_mib.items() if t <= t_first_kill_s)
        print(
            f"\nscenario 2: guard {guard_mib} MiB, growth per guest until the first OOM kill "
            f"{sorted(growth_mib.values())} MiB (until the end {sorted(growth_all_mib.values())} MiB), held at the "
            f"first kill {sorted(held_mib.values())} MiB, the least {100 * least_share:.0f}% of an equal share; "
            f"handed out at most {handed_out_mib:.0f} MiB; host lowest {lowest[1]:.0f} MiB at t={lowest[0]} s; "
            f"before the first kill (t={t_first_kill_s:.0f} s) {before_kill_mib:.0f} MiB handed out and "
            f"{room_mib - left_mib:.0f} of the {room_mib:.0f} MiB the host had above its guard in use"
        )

        assert all(v > 0 for v in growth_mib.values()), f"not every guest grew: {growth_mib}"
        assert least_share >= SHARE_FLOOR, (
            f"held at the first kill: {held_mib}, the least < {SHARE_FLOOR:.0%} of the mean"
        )
        # "About" 1.5 GiB while the four hogs run: the guard is set from one reading of the host's available memory,
        # which drifts by ~100 MiB over a run on a live machine (1688 MiB seen with the host 238 MiB above its
        # guard). After the first kill the balloons' sum says less: a dead hog's guest keeps its size until its
        # lowering lands, and what the guard held for the memory QEMU never backed there is lent to a survivor (CI:
        # 1841 MiB at t=26 s, 331 MiB of it lent, the host 428 MiB above its guard). What must hold exactly is the
        # guard itself, below, over the whole run.
        assert before_kill_mib <= HANDOUT_MIB + 250, (
            f"{before_kill_mib:.0f} MiB handed out before the first OOM kill, the guard allowed ~{HANDOUT_MIB}"
        )
        assert before_kill_mib >= 0.75 * HANDOUT_MIB, (
            f"only {before_kill_mib:.0f} MiB handed out before the first OOM kill; the guard allowed ~{HANDOUT_MIB}"
        )
        assert room_mib - left_mib >= 0.7 * room_mib, (
            f"a hog died with the host still {left_mib:.0f} MiB above its guard (of {room_mib:.0f} MiB at the start)"
        )
        assert lowest[1] >= guard_mib, f"host available {lowest[1]} MiB < guard {guard_mib} MiB at t={lowest[0]} s"
        for g in names:
            t_kill_s = analysis.first_event_t_s(tl, "hog_killed", g)
            assert t_kill_s is not None
            t_back_s = analysis.first_t_s(tl, g, "current_mib", lambda v: v <= START_MIB + 100, t_kill_s)
            assert t_back_s is not None, f"{g} not reclaimed after its hog died"
        # Under the guard a hog dies wherever the host stops it, not at its max: any hog may be OOM killed.
        assert_always(tl, oom_ok=dict.fromkeys(names, 0.0))

    retry_once_on_outage(scenario, run_dir, guard_sensitive=True)


def test_freed_memory_flows_to_grower(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """3: guest 1 holds 512 MiB then exits; its memory flows to guest 2, which reaches near its max.

    The host guard allows only ~1.5 GiB beyond the start, less than guest 1's hold plus guest 2's
    way to its max, so guest 2 can only get there with memory guest 1 gave back.
    """

    def scenario(attempt_dir: Path) -> None:
        with _new_run(lab_prefix, attempt_dir, guest_image, "3: hold-and-exit, unbounded grower, two idle") as run:
            g1, g2, *_idle = run.lab.names
            run.start_memcoord()
            guard_mib = _settle_then_guard(run, HANDOUT_MIB)
            t_hog_s = run.t_s()
            run.lab.start_hog(1, "hold", size_mib=512, hold_s=10, page_us=HOG_PAGE_US)
            run.lab.start_hog(2, "grow", page_us=2 * HOG_PAGE_US)  # slower, so guest 1 frees before guest 2 needs it
            run.wait_until(lambda: hog_state(run, 1) == "exited", 120, "guest 1's hog held and exited")
            run.wait_until(lambda: hog_state(run, 2) == "killed", 240, "guest 2's hog OOM killed")
            reclaim_mib = run.timeline.meta["config"]["guest"]["reclaim_step_mib"]
            run.wait_until(
                lambda: all(r["current_mib"] <= START_MIB + reclaim_mib for r in run.latest().values()),
                RECLAIM_DEADLINE_S + 30,
                "everything idle reclaimed",
            )
            time.sleep(2)
        tl = run.timeline
        t_exit_s = analysis.first_event_t_s(tl, "hog_exit", g1)
        t_kill_s = analysis.first_event_t_s(tl, "hog_killed", g2)
        assert t_exit_s is not None and t_kill_s is not None
        g1_peak_mib = analysis.peak(tl, g1, "current_mib", t_hog_s, t_exit_s)
        g1_after_mib = analysis.minimum(tl, g1, "current_mib", t_exit_s, t_kill_s)
        g2_at_exit_mib = analysis.value_at(tl, g2, "current_mib", t_exit_s)
        g2_peak_mib = analysis.peak(tl, g2, "current_mib", t_hog_s, t_kill_s)
        print(
            f"\nscenario 3: guard {guard_mib} MiB; g1 peak {g1_peak_mib:.0f} -> {g1_after_mib:.0f} MiB after its hog "
            f"exited; g2 {g2_at_exit_mib:.0f} MiB then, peak {g2_peak_mib:.0f} MiB"
        )
        assert g1_peak_mib >= START_MIB + 256, f"guest 1 never grew to hold its hog ({g1_peak_mib} MiB)"
        freed_mib = g1_peak_mib - g1_after_mib
        assert freed_mib >= 300, f"guest 1 gave back only {freed_mib:.0f} MiB after its hog exited"
        # Guest 2 got past what the host guard alone would have let it have: the rest came from guest 1.
        g2_growth_mib = g2_peak_mib - analysis.value_at(tl, g2, "current_mib", t_hog_s)
        g1_growth_mib = g1_peak_mib - analysis.value_at(tl, g1, "current_mib", t_hog_s)
        assert g2_growth_mib + g1_growth_mib > HANDOUT_MIB + 150, (
            f"g1 grew {g1_growth_mib:.0f} and g2 {g2_growth_mib:.0f} MiB: no sign of g1's memory moving to g2"
        )
        assert g2_peak_mib >= MAX_MIB - NEAR_MAX_MIB, f"guest 2 peaked at {g2_peak_mib} MiB, not near its max"
        assert_always(tl, oom_ok={g2: MAX_MIB - NEAR_MAX_MIB})

    retry_once_on_outage(scenario, run_dir, guard_sensitive=True)
