"""Bursts and large guests on real QEMU guests with the real `memcoord run` (shipped defaults, interval 1 s).

a. bursts memcoord can catch: a 2 GiB guest reclaimed to its wasteful line (~350 MiB usable), next to an idle
   neighbour, runs a process that takes ~650 MiB at ~130 MiB/s, holds it, exits; twice, memcoord reclaiming it
   in between. No OOM kill anywhere, the guest grows to hold each burst, the host stays at its guard, and the
   guest is reclaimed again after the last burst;
b. full-speed bursts on a deflate-on-OOM guest: the same guest with <memballoon autodeflate='on'>, reclaimed
   idle, then bursts of 700 MiB as fast as it can touch pages (faster than a 1 s coordinator can react): its own
   kernel deflates the balloon, so no OOM kill, and memcoord leaves it alone while it idles;
c. a large guest: 6 GiB maximum, using a small part of it; its process ramps by 1.8 GiB in about ten seconds.
   The percentage thresholds apply: it grows in time, in steps sized to it, with no OOM kill, and is then
   reclaimed no lower than its wasteful line (15 % of its size).

As in test_course.py every assertion is on the recorded timeline (libvirt's balloon sizes, the guests' own
stats, OOM kills from the consoles, the host's available memory); each scenario prints its numbers first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from lab import analysis
from lab.image import GuestImage
from lab.session import LabRun
from lab.timeline import ACTION_EVENT, Timeline
from memcoord.core import config as mc_config
from memcoord.core.model import Action, kib_to_mib, mib_to_kib
from memcoord.core.policy import thresholds_kib
from tests.helpers.realguest import (
    HOST_DRIFT_MIB,
    assert_always,
    assert_watched,
    guest_cfg,
    hog_state,
    host_lowest,
    retry_once_on_outage,
)

pytestmark = pytest.mark.real

# A balloon that moved by no more than this over QUIET_S, with no memcoord action on it meanwhile, has stopped:
# idle reclaim lowers a guest every few seconds (a step, then a fresh sample after the balloon settled).
QUIET_S = 8.0
STILL_TOLERANCE_MIB = 4
RECLAIM_TIMEOUT_S = 90
# The guest's own figures wobble by a few MiB between reports; a reclaim "no lower than the line" allows that.
LINE_TOLERANCE_MIB = 32
# A grow this long after a hog's end still belongs to its burst (it came too late).
LATE_GROW_S = 3.0


def _wait_balloon_still(run: LabRun, guest: str, since_s: float, timeout_s: float = RECLAIM_TIMEOUT_S) -> float:
    """Wait until memcoord has left the guest alone for QUIET_S since since_s and its balloon held still;
    returns the time (timeline clock) it was found so."""

    def still() -> bool:
        now_s = run.t_s()
        last_s = max((a["t_s"] for a in run.timeline.events_of(ACTION_EVENT, guest)), default=since_s)
        if now_s - max(last_s, since_s) < QUIET_S:
            return False
        sizes = [v for t, v in run.timeline.series(guest, "current_mib") if t >= now_s - QUIET_S and v is not None]
        return len(sizes) >= 2 and max(sizes) - min(sizes) <= STILL_TOLERANCE_MIB

    run.wait_until(still, timeout_s, f"{guest}'s balloon still (memcoord done reclaiming it)")
    return run.t_s()


def _config_of(tl: Timeline) -> mc_config.Config:
    """The config memcoord ran with, validated as memcoord itself reads it."""
    return mc_config.parse(tomli_w.dumps(tl.meta["config"]), "lab config")


def _guard_overrides(run: LabRun, handout_mib: int) -> dict[str, Any]:
    """A host guard that lets the balloons grow about handout_mib beyond their sizes now: a real line the
    host must stay above, with room for the scenario's growth."""
    return {"host": {"min_available_mib": run.guard_allowing_mib(handout_mib)}}


@dataclass(frozen=True)
class Burst:
    """One run of the hog in a guest, as the timeline saw it."""

    t_start_s: float  # the hog's start line on the console
    t_full_s: float | None  # it held all it asked for (None: killed before)
    t_end_s: float  # it exited or was killed
    killed: bool
    hog_mib: int  # what it held at its end (or at its kill)
    before_mib: float  # balloon at its start
    usable_before_mib: float
    peak_mib: float  # balloon, start to end
    min_usable_mib: float  # the guest's MemAvailable, lowest sample start to end
    min_unused_mib: float  # its MemFree
    first_grow_s: float | None  # from the start to memcoord's first grow of the guest
    # (t from start, MiB, s the balloon took to get there or None, reason) of each grow, from the start to
    # LATE_GROW_S past the end: a grow that came after a kill shows how late it was.
    grows: list[tuple[float, int, float | None, str]]

    @property
    def rate_mib_per_s(self) -> float:
        t_to_s = self.t_full_s if self.t_full_s is not None else self.t_end_s
        return self.hog_mib / max(t_to_s - self.t_start_s, 1e-3)

    def line(self) -> str:
        return (
            f"hog {'KILLED at' if self.killed else 'held'} {self.hog_mib} MiB at {self.rate_mib_per_s:.0f} MiB/s; "
            f"balloon {self.before_mib:.0f} -> peak {self.peak_mib:.0f} MiB (+{self.peak_mib - self.before_mib:.0f}); "
            f"usable before {self.usable_before_mib:.0f} MiB, lowest sampled {self.min_usable_mib:.0f} MiB (MemFree "
            f"{self.min_unused_mib:.0f}; nan: no sample while it ran); ended {self.t_end_s - self.t_start_s:.2f} s "
            "after the start, first grow "
            f"{'never' if self.first_grow_s is None else f'{self.first_grow_s:.2f} s'} after it"
        )

    def grow_lines(self) -> list[str]:
        return [
            f"    +{t_s:.2f} s grow {mib} MiB (balloon there {'never' if landed_s is None else f'{landed_s:.1f} s'} "
            f"later): {reason}"
            for t_s, mib, landed_s, reason in self.grows
        ]


def _burst(tl: Timeline, guest: str, t_from_s: float, t_to_s: float = float("inf")) -> Burst:
    """The first hog run in the guest that started at or after t_from_s, up to its exit or kill (or t_to_s, if
    it still ran then)."""
    t_start_s = min(e["t_s"] for e in tl.events_of("hog_start", guest) if e["t_s"] >= t_from_s)
    ends = [
        e
        for e in tl.events
        if e["guest"] == guest and e["kind"] in ("hog_exit", "hog_killed") and t_start_s <= e["t_s"] <= t_to_s
    ]
    end = min(ends, key=lambda e: e["t_s"]) if ends else None
    t_end_s = end["t_s"] if end else t_to_s
    full = [e for e in tl.events_of("hog_holding", guest) if t_start_s <= e["t_s"] <= t_end_s]
    grows = [
        a
        for a in tl.events_of(ACTION_EVENT, guest)
        if a["action"] == Action.GROW and t_start_s <= a["t_s"] <= t_end_s + LATE_GROW_S
    ]
    window = (t_start_s, t_end_s)
    return Burst(
        t_start_s=t_start_s,
        t_full_s=full[0]["t_s"] if full else None,
        t_end_s=t_end_s,
        killed=end is not None and end["kind"] == "hog_killed",
        hog_mib=full[0]["hog_mib"] if full else (end["hog_mib"] if end else 0),
        before_mib=analysis.value_at(tl, guest, "current_mib", t_start_s),
        usable_before_mib=analysis.value_at(tl, guest, "usable_mib", t_start_s),
        # The size it had at the start, when no sample fell between the start and a quick end.
        peak_mib=max(
            analysis.value_at(tl, guest, "current_mib", t_start_s),
            _or(analysis.peak(tl, guest, "current_mib", *window), 0.0),
        ),
        min_usable_mib=analysis.minimum(tl, guest, "usable_mib", *window),
        min_unused_mib=analysis.minimum(tl, guest, "unused_mib", *window),
        first_grow_s=grows[0]["t_s"] - t_start_s if grows else None,
        grows=[
            (a["t_s"] - t_start_s, a["to_mib"] - a["from_mib"], _landed_s(tl, guest, a), a["reason"]) for a in grows
        ],
    )


def _or(value: float, default: float) -> float:
    """value, or default where the samples had none (NaN)."""
    return default if math.isnan(value) else value


def _landed_s(tl: Timeline, guest: str, action: dict[str, Any]) -> float | None:
    """How long the balloon took to reach what the action set (as the 1 s samples see it)."""
    t_s = analysis.first_t_s(
        tl, guest, "current_mib", lambda v: v is not None and v >= action["to_mib"] - STILL_TOLERANCE_MIB, action["t_s"]
    )
    return None if t_s is None else t_s - action["t_s"]


# -- a. bursts memcoord can catch, b. full-speed bursts on a deflate-on-OOM guest ---------------------------------
BURST_MAX_MIB = 2048
BURST_START_MIB = 768  # above the wasteful line, so that the guest is reclaimed before its first burst
BURST_HOLD_S = 6
BURSTS = 2
# What the guard lets the balloons grow beyond their sizes at memcoord's start: a burst's ~500 MiB of growth,
# memcoord's safety margin on a fast ramp (twice what it uses before memcoord can look again), and its QEMU's own.
BURST_HANDOUT_MIB = 1536

# a. 30 us per 4 KiB page asks for ~130 MiB/s: from ~350 MiB usable, memcoord's reaction (~1.1 s to its first grow,
# then the balloon's move) leaves the guest about 250 MiB usable at the lowest, margin for a late sample.
CATCHABLE_MIB = 650
CATCHABLE_PAGE_US = 30
# The hog must really have run near the rate the scenario claims: on a host too busy to touch pages that fast the
# scenario would show nothing about memcoord's reaction.
CATCHABLE_MIN_RATE_MIB_PER_S = 90

# b. 1 us per 4 KiB page asks for 4 GiB/s: the hog touches pages as fast as the software-emulated guest lets it,
# faster than any coordinator that looks once a second; only the guest's kernel (deflate on OOM) can catch it.
FULL_SPEED_MIB = 700
FULL_SPEED_PAGE_US = 1
# How long the deflate-on-OOM guest is watched idle after memcoord reclaimed it: memcoord must leave it alone.
SETTLED_WINDOW_S = 30.0


def _bursts(run: LabRun, guest: str, size_mib: int, page_us: int) -> list[float]:
    """BURSTS runs of the hog in guest 1 (each holds size_mib for BURST_HOLD_S and exits), each after memcoord
    left the guest still; returns when memcoord had left it still before each burst and after the last."""
    t_still_s = []
    for _ in range(BURSTS):
        t_still_s.append(_wait_balloon_still(run, guest, run.t_s()))
        run.lab.start_hog(1, "hold", size_mib=size_mib, hold_s=BURST_HOLD_S, page_us=page_us)
        run.wait_until(lambda: hog_state(run, 1) in ("exited", "killed"), BURST_HOLD_S + 60, "the burst's hog ended")
    t_still_s.append(_wait_balloon_still(run, guest, run.t_s()))
    return t_still_s


def _print_bursts(bursts: list[Burst]) -> None:
    for k, b in enumerate(bursts, 1):
        print(f"  burst {k}: {b.line()}")
        print("\n".join(b.grow_lines()[:4]))


def _assert_held(bursts: list[Burst], size_mib: int) -> None:
    for k, b in enumerate(bursts, 1):
        assert not b.killed and b.hog_mib >= size_mib, f"burst {k}: the hog died at {b.hog_mib} MiB of {size_mib}"


def _assert_host_guard(tl: Timeline, guard_mib: int, t_from_s: float, t_to_s: float) -> None:
    t_s, lowest_mib = host_lowest(tl, t_from_s, t_to_s)
    assert lowest_mib >= guard_mib - HOST_DRIFT_MIB, (
        f"host at {lowest_mib:.0f} MiB, below its guard {guard_mib} MiB, at t={t_s} s"
    )


def _actions_line(actions: list[dict[str, Any]], t0_s: float) -> str:
    return "; ".join(
        f"+{a['t_s'] - t0_s:.1f} s {a['action']} {a['from_mib']:.0f}->{a['to_mib']:.0f} ({a['reason']})"
        for a in actions
    )


def test_bursts_memcoord_catches(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """A 2 GiB guest reclaimed to its wasteful line bursts to ~650 MiB at ~130 MiB/s, twice, reclaimed in between,
    next to an idle neighbour: memcoord grows it in time (no OOM kill, the balloon holds the burst and what the
    guest used), the host stays at its guard, and the guest is reclaimed again after the last burst."""

    def scenario(attempt_dir: Path) -> None:
        title = f"a: {BURSTS} bursts of {CATCHABLE_MIB} MiB at {CATCHABLE_PAGE_US} us/page after idle reclaim"
        with LabRun(
            lab_prefix,
            attempt_dir,
            n=2,
            max_mib=BURST_MAX_MIB,
            current_mib=BURST_START_MIB,
            image=guest_image,
            title=title,
        ) as run:
            burster = run.lab.names[0]
            overrides = _guard_overrides(run, BURST_HANDOUT_MIB)
            run.start_memcoord(overrides)
            t_mc_s = run.t_s()
            t_still_s = _bursts(run, burster, CATCHABLE_MIB, CATCHABLE_PAGE_US)
            t_end_s = run.t_s()
        tl = run.timeline
        cfg = guest_cfg(tl)
        guard_mib = overrides["host"]["min_available_mib"]
        bursts = [_burst(tl, burster, t_s) for t_s in t_still_s[:-1]]
        still_mib = [analysis.value_at(tl, burster, "current_mib", t) for t in t_still_s]
        usable_still_mib = [analysis.value_at(tl, burster, "usable_mib", t) for t in t_still_s]
        lowest = host_lowest(tl, t_mc_s, t_end_s)
        print(f"\na: guard {guard_mib} MiB; {burster} still at {still_mib} MiB (usable {usable_still_mib})")
        _print_bursts(bursts)
        print(f"  host lowest {lowest[1]:.0f} MiB ({lowest[1] - guard_mib:+.0f} vs the guard) at t={lowest[0]} s")

        assert_watched(tl, t_mc_s, t_end_s)
        assert_always(tl)  # no OOM kill in any guest, nobody below the floor, memcoord alive
        assert usable_still_mib[0] <= cfg["wasteful_mib"] + LINE_TOLERANCE_MIB, (
            f"{burster} was not reclaimed to its wasteful line before the first burst ({usable_still_mib[0]:.0f} MiB "
            "usable)"
        )
        _assert_held(bursts, CATCHABLE_MIB)
        for k, b in enumerate(bursts, 1):
            assert b.rate_mib_per_s >= CATCHABLE_MIN_RATE_MIB_PER_S, (
                f"burst {k} ran at {b.rate_mib_per_s:.0f} MiB/s only: too slow to show memcoord's reaction"
            )
            # The balloon held the burst on top of what the guest used before it (its size less its usable).
            used_before_mib = b.before_mib - b.usable_before_mib
            assert b.peak_mib >= CATCHABLE_MIB + used_before_mib, (
                f"burst {k}: the balloon peaked at {b.peak_mib:.0f} MiB, below the {CATCHABLE_MIB} MiB burst plus the "
                f"{used_before_mib:.0f} MiB the guest used before it"
            )
        _assert_host_guard(tl, guard_mib, t_mc_s, t_end_s)
        # Reclaimed again after the last burst (from the peak it grew to for it) to where idle reclaim had it.
        assert bursts[-1].peak_mib > still_mib[-1] + cfg["reclaim_step_mib"], (
            f"{burster} never grew above {still_mib[-1]:.0f} MiB for the last burst"
        )
        assert still_mib[-1] <= still_mib[0] + cfg["reclaim_step_mib"], (
            f"after the last burst {burster} stays at {still_mib[-1]:.0f} MiB (it was reclaimed to "
            f"{still_mib[0]:.0f} MiB before the first)"
        )

    retry_once_on_outage(scenario, run_dir, guard_sensitive=True)


def test_full_speed_bursts_on_a_deflate_on_oom_guest(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """A 2 GiB guest with <memballoon autodeflate='on'>, reclaimed by memcoord (shipped guest settings) to its
    wasteful line, bursts to 700 MiB at full speed twice: its own kernel deflates the balloon, so no OOM kill;
    memcoord leaves it alone while it idles (no grow, no more reclaims than the steps to its line), and the host
    stays at its guard."""

    def scenario(attempt_dir: Path) -> None:
        title = f"b: {BURSTS} full-speed bursts of {FULL_SPEED_MIB} MiB, autodeflate='on'"
        with LabRun(
            lab_prefix,
            attempt_dir,
            n=2,
            max_mib=BURST_MAX_MIB,
            current_mib=BURST_START_MIB,
            image=guest_image,
            title=title,
            autodeflate_guests=(1,),
        ) as run:
            burster = run.lab.names[0]
            overrides = _guard_overrides(run, BURST_HANDOUT_MIB)
            run.start_memcoord(overrides)
            t_mc_s = run.t_s()
            t_reclaimed_s = _wait_balloon_still(run, burster, t_mc_s)
            time.sleep(SETTLED_WINDOW_S)
            t_settled_s = run.t_s()
            t_still_s = _bursts(run, burster, FULL_SPEED_MIB, FULL_SPEED_PAGE_US)
            t_end_s = run.t_s()
        tl = run.timeline
        cfg = guest_cfg(tl)
        guard_mib = overrides["host"]["min_available_mib"]
        idle_actions = [a for a in tl.events_of(ACTION_EVENT, burster) if t_mc_s <= a["t_s"] <= t_settled_s]
        reclaimed_mib = analysis.value_at(tl, burster, "current_mib", t_reclaimed_s)
        usable_reclaimed_mib = analysis.value_at(tl, burster, "usable_mib", t_reclaimed_s)
        # The reclaim steps idle reclaim needs from the guest's start to where it left it (one more for the wobble
        # of the guest's own figures at the line).
        steps_allowed = math.ceil((BURST_START_MIB - reclaimed_mib) / cfg["reclaim_step_mib"]) + 1
        bursts = [_burst(tl, burster, t_s) for t_s in t_still_s[:-1]]
        lowest = host_lowest(tl, t_mc_s, t_end_s)
        print(
            f"\nb: guard {guard_mib} MiB; {burster} reclaimed to {reclaimed_mib:.0f} MiB (usable "
            f"{usable_reclaimed_mib:.0f}) {t_reclaimed_s - t_mc_s:.0f} s after memcoord's start; "
            f"{len(idle_actions)} actions in its {t_settled_s - t_mc_s:.0f} s idle (allowed {steps_allowed} reclaims): "
            f"{_actions_line(idle_actions, t_mc_s)}"
        )
        _print_bursts(bursts)
        after = [a for a in tl.events_of(ACTION_EVENT, burster) if bursts[0].t_start_s <= a["t_s"] <= t_end_s]
        print(f"  {len(after)} actions from the first burst to the end: {_actions_line(after, bursts[0].t_start_s)}")
        print(f"  host lowest {lowest[1]:.0f} MiB ({lowest[1] - guard_mib:+.0f} vs the guard) at t={lowest[0]} s")

        assert_watched(tl, t_mc_s, t_end_s)
        assert_always(tl)  # no OOM kill in any guest, nobody below the floor, memcoord alive
        assert reclaimed_mib < BURST_START_MIB - cfg["reclaim_step_mib"], (
            f"memcoord did not reclaim the idle {burster} (at {reclaimed_mib:.0f} MiB)"
        )
        assert usable_reclaimed_mib >= cfg["wasteful_mib"] - LINE_TOLERANCE_MIB, (
            f"{burster} reclaimed to {usable_reclaimed_mib:.0f} MiB usable, below its wasteful line"
        )
        idle_grows = [a for a in idle_actions if a["action"] == Action.GROW]
        assert not idle_grows, f"memcoord grew the idle {burster}: {_actions_line(idle_grows, t_mc_s)}"
        assert len(idle_actions) <= steps_allowed, (
            f"{len(idle_actions)} actions on the idle {burster}, more than the {steps_allowed} reclaim steps to its "
            f"line: {_actions_line(idle_actions, t_mc_s)}"
        )
        _assert_held(bursts, FULL_SPEED_MIB)
        # Idle again after each burst: memcoord reclaims it and grows it no more (a grow there is a reclaim step
        # read as new use).
        idle_after = [
            a
            for b, t_next_s in zip(bursts, t_still_s[1:], strict=True)
            for a in tl.events_of(ACTION_EVENT, burster)
            if a["action"] == Action.GROW and b.t_end_s + LATE_GROW_S < a["t_s"] <= t_next_s
        ]
        assert not idle_after, f"memcoord grew the idle {burster} after a burst: {_actions_line(idle_after, t_mc_s)}"
        _assert_host_guard(tl, guard_mib, t_mc_s, t_end_s)

    retry_once_on_outage(scenario, run_dir, guard_sensitive=True)


# -- c. a large guest -----------------------------------------------------------------------------------------
LARGE_MAX_MIB = 6144
LARGE_START_MIB = 1536
LARGE_RAMP_MIB = 1800
# 20 us per page asks for ~195 MiB/s: 1.8 GiB in ~10 s, if the software-emulated guest keeps up.
LARGE_PAGE_US = 20
LARGE_HANDOUT_MIB = 3072  # the ramp's growth, twice-over safety margin and QEMU's own, below the guard
# Memcoord's reaction time to a ramp: two stats reports to see it, a tick, the balloon's move.
REACTION_S = 4.0


def test_large_guest_ramp(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """A 6 GiB guest using a small part of it ramps by 1.8 GiB in ~10 s: it grows in time, in steps sized to it
    (the percentage thresholds), no OOM kill; then it is reclaimed, no lower than its wasteful line."""

    def scenario(attempt_dir: Path) -> None:
        title = f"c: a {LARGE_MAX_MIB} MiB guest ramps by {LARGE_RAMP_MIB} MiB"
        with LabRun(
            lab_prefix,
            attempt_dir,
            n=1,
            max_mib=LARGE_MAX_MIB,
            current_mib=LARGE_START_MIB,
            image=guest_image,
            title=title,
        ) as run:
            big = run.lab.names[0]
            overrides = _guard_overrides(run, LARGE_HANDOUT_MIB)
            run.start_memcoord(overrides)
            t_mc_s = run.t_s()
            t_idle_s = _wait_balloon_still(run, big, t_mc_s)
            run.lab.start_hog(1, "hold", size_mib=LARGE_RAMP_MIB, hold_s=0, page_us=LARGE_PAGE_US)
            run.wait_until(lambda: hog_state(run, 1) in ("holding", "killed"), 120, "the ramp's hog holding")
            t_held_s = run.t_s()
            t_reclaimed_s = _wait_balloon_still(run, big, t_held_s, timeout_s=150)
            t_end_s = run.t_s()
        tl = run.timeline
        config = _config_of(tl)
        starving_kib, wasteful_kib, grow_step_kib = thresholds_kib(config, mib_to_kib(LARGE_MAX_MIB))
        starving_mib, wasteful_mib, grow_step_mib = (kib_to_mib(k) for k in (starving_kib, wasteful_kib, grow_step_kib))
        guard_mib = overrides["host"]["min_available_mib"]
        ramp = _burst(tl, big, t_idle_s, t_held_s)
        idle_mib = analysis.value_at(tl, big, "current_mib", t_idle_s)
        peak_mib = analysis.peak(tl, big, "current_mib", t_idle_s, t_reclaimed_s)
        reclaimed_mib = analysis.value_at(tl, big, "current_mib", t_reclaimed_s)
        usable_reclaimed_mib = analysis.value_at(tl, big, "usable_mib", t_reclaimed_s)
        usable_low_after_mib = analysis.minimum(tl, big, "usable_mib", t_held_s + QUIET_S, t_reclaimed_s)
        reclaims = [
            a for a in tl.events_of(ACTION_EVENT, big) if a["action"] == Action.RECLAIM and a["t_s"] > ramp.t_start_s
        ]
        lowest = host_lowest(tl, t_mc_s, t_end_s)
        # When the ramp, at the rate it really ran, took the guest's free memory down to its starving line.
        t_to_starving_s = (ramp.usable_before_mib - starving_mib) / max(ramp.rate_mib_per_s, 1.0)
        print(
            f"\nc: guard {guard_mib} MiB; lines for {LARGE_MAX_MIB} MiB: starving {starving_mib:.0f}, wasteful "
            f"{wasteful_mib:.0f}, grow step {grow_step_mib:.0f} MiB; idle at {idle_mib:.0f} MiB (usable "
            f"{ramp.usable_before_mib:.0f}); ramp: {ramp.line()}; free down to the starving line "
            f"{t_to_starving_s:.1f} s in at that rate"
        )
        print("\n".join(ramp.grow_lines()))
        print(
            f"  peak {peak_mib:.0f} MiB; reclaimed ({len(reclaims)} steps) to {reclaimed_mib:.0f} MiB, usable "
            f"{usable_reclaimed_mib:.0f} MiB (lowest {usable_low_after_mib:.0f}) vs wasteful line {wasteful_mib:.0f}"
            f" MiB; host lowest {lowest[1]:.0f} MiB ({lowest[1] - guard_mib:+.0f} vs the guard)"
        )

        assert_watched(tl, t_mc_s, t_end_s)
        assert_always(tl)  # no OOM kill (the hog still holds), nobody below the floor, memcoord alive
        assert not ramp.killed and ramp.hog_mib >= LARGE_RAMP_MIB, f"the ramp's hog died at {ramp.hog_mib} MiB"
        assert ramp.first_grow_s is not None and ramp.first_grow_s <= max(t_to_starving_s, 0.0) + REACTION_S, (
            f"first grow {ramp.first_grow_s} s into the ramp; its free memory reached the starving line "
            f"{t_to_starving_s:.1f} s in"
        )
        small = [
            (round(t, 1), mib)
            for t, mib, _, _ in ramp.grows
            if t <= ramp.t_end_s - ramp.t_start_s and mib < grow_step_mib
        ]
        assert not small, f"grow steps below the guest's own grow step {grow_step_mib:.0f} MiB: {small}"
        assert lowest[1] >= guard_mib - HOST_DRIFT_MIB, (
            f"host at {lowest[1]:.0f} MiB, below its guard {guard_mib} MiB, at t={lowest[0]} s"
        )
        assert reclaims and reclaimed_mib < peak_mib, f"not reclaimed after the ramp (at {reclaimed_mib:.0f} MiB)"
        assert usable_low_after_mib >= wasteful_mib - LINE_TOLERANCE_MIB, (
            f"reclaimed to {usable_low_after_mib:.0f} MiB usable, below its wasteful line {wasteful_mib:.0f} MiB"
        )

    retry_once_on_outage(scenario, run_dir, guard_sensitive=True)
