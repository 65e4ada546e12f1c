"""The policy's harder behaviours on real QEMU guests with the real `memcoord run`.

a. page cache is not hunger: a guest full of page cache (it reads its disk) is not grown while another
   guest's real need is served from a limited headroom;
b. host pressure is relieved: a host process pushes the host below its guard and memcoord takes memory
   back from the guests holding backed, reclaimable memory (cache) until the host is above it again;
c. the headroom that exists: with H MiB above the guard, a growing guest next to three idle ones gets
   most of H before its process is OOM killed;
d. a balloon set elsewhere (an admin's `virsh setmem`) while memcoord's grow is on its way is taken where it is;
e. a neighbour of a big guest whose ramp the guard holds (an 8 GiB balloon, most of it never touched) is fed and
   runs past the memory it had;
f. relief asks a guest holding GiBs above its high for a step on each new report, not only on one from after its
   last lowering.

As in test_course.py every assertion is on the recorded timeline (libvirt's balloon sizes, the guests'
own stats, OOM kills from the consoles, the host's available memory), and every scenario prints its
numbers before asserting. Each boots its own lab and takes about 1-2 minutes on a 2-core host.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import psutil
import pytest

from lab import analysis
from lab.hosthog import HostHog
from lab.image import GuestImage
from lab.session import LabRun
from lab.timeline import ACTION_EVENT, Timeline
from memcoord.core.model import KIB_PER_MIB, Action, Rule
from tests.helpers.realguest import (
    BASELINE_S,
    HOST_DRIFT_MIB,
    assert_always,
    assert_watched,
    guest_cfg,
    hog_state,
    host_lowest,
    retry_once_on_outage,
)

pytestmark = pytest.mark.real

MAX_MIB = 2048
START_MIB = 512
GROWER_PAGE_US = 160  # 4 KiB per 160 us = 25 MiB/s: a steady grower a 1 s loop must keep ahead of
# What the guests' QEMUs may take beyond the headroom: their own allocations beyond guest memory (device
# models, page tables under software emulation) move their resident size by tens of MiB.
QEMU_DRIFT_MIB = 50
# What "about H" may fall short by, in host memory the grower takes: memcoord's guard counts the grower's QEMU
# overhead (host.guest_overhead_mib, 128 MiB shipped) as memory it will take, plus the host's drift over the
# ~40 s the grower needs.
GROWTH_MARGIN_MIB = 128 + 64


def _settle_then_guard(run: LabRun, headroom_mib: int) -> int:
    """Let memcoord's first reclaims land, then set the host guard (SIGHUP reload) headroom_mib below the
    host's available memory: the headroom that exists, by the host's own figure (the one memcoord reads), not
    by memcoord's accounting of it."""
    time.sleep(BASELINE_S)

    def quiet() -> bool:
        actions = run.timeline.events_of(ACTION_EVENT)
        return not actions or run.t_s() - actions[-1]["t_s"] >= 3

    run.wait_until(quiet, 30, "memcoord quiet after its first reclaims")
    guard_mib = psutil.virtual_memory().available // 2**20 - headroom_mib
    run.reload_memcoord({"host": {"min_available_mib": guard_mib}})
    return guard_mib


def _median(tl: Timeline, guest: str, key: str, t_from_s: float, t_to_s: float) -> float:
    vals = sorted(v for t, v in tl.series(guest, key) if t_from_s <= t <= t_to_s)
    return vals[len(vals) // 2] if vals else float("nan")


@dataclass(frozen=True)
class Served:
    """What a growing guest got from t_from_s to t_to_s (its hog's start to its OOM kill or the end)."""

    start_mib: float  # balloon size
    peak_mib: float
    rss_start_mib: float  # its QEMU's resident memory: what it holds of the host's
    rss_end_mib: float
    killed: bool

    @property
    def taken_mib(self) -> float:
        """Host memory the guest took. More than its balloon growth: its process also touches the guest's
        own memory that QEMU had never backed (a 512 MiB guest starts with ~230 MiB resident)."""
        return self.rss_end_mib - self.rss_start_mib

    def __str__(self) -> str:
        return (
            f"balloon {self.start_mib:.0f} -> peak {self.peak_mib:.0f} MiB (+{self.peak_mib - self.start_mib:.0f}), "
            f"host memory taken {self.taken_mib:.0f} MiB (QEMU resident {self.rss_start_mib:.0f} -> "
            f"{self.rss_end_mib:.0f} MiB; ~{max(0.0, self.start_mib - self.rss_start_mib):.0f} MiB of its own never "
            f"backed at the start)"
        )


def _served(tl: Timeline, guest: str, t_from_s: float, t_to_s: float) -> Served:
    return Served(
        start_mib=analysis.value_at(tl, guest, "current_mib", t_from_s),
        peak_mib=analysis.peak(tl, guest, "current_mib", t_from_s, t_to_s),
        rss_start_mib=analysis.value_at(tl, guest, "rss_mib", t_from_s),
        rss_end_mib=analysis.peak(tl, guest, "rss_mib", t_from_s, t_to_s),
        killed=analysis.first_event_t_s(tl, "hog_killed", guest) is not None,
    )


def _assert_served(served: Served, headroom_mib: int) -> None:
    """The grower took most of the headroom before its process died (if it died: that is where the host had
    nothing more to give). Measured in host memory, not balloon size, since that is what the guard guards."""
    assert served.taken_mib >= headroom_mib - GROWTH_MARGIN_MIB, (
        f"the grower took {served.taken_mib:.0f} MiB of the ~{headroom_mib} MiB the host had above its guard "
        f"{'before its hog was OOM killed' if served.killed else ''}"
    )


def _moves(actions: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(a["guest"], a["from_mib"], a["to_mib"]) for a in actions]


def _guests_took_mib(tl: Timeline, t_from_s: float, t_to_s: float) -> list[tuple[float, float]]:
    """(t_s, MiB) host memory all the lab's guests took since t_from_s: the growth of their QEMUs' resident
    memory. Unlike host available, this does not move with other users of the host."""
    by_t: dict[float, float] = {}
    for r in tl.rows:
        if r["t_s"] <= t_to_s and r["rss_mib"] is not None:
            by_t[r["t_s"]] = by_t.get(r["t_s"], 0.0) + r["rss_mib"]
    before = [t for t in by_t if t <= t_from_s]
    base_mib = by_t[max(before)] if before else by_t[min(by_t)]  # the last sample before t_from_s
    return [(t, round(v - base_mib, 1)) for t, v in sorted(by_t.items()) if t >= t_from_s]


# -- a. page cache is not hunger ------------------------------------------------------------------------------
CACHE_HEADROOM_MIB = 600  # what the guard lets memcoord hand out: less than the reader alone would take to its max
# A grow is a grow step (300 MiB shipped) or what a ramp needs; the balloon's reported size wobbles by a MiB or
# two. Anything above this is the reader being fed.
READER_GROWTH_LIMIT_MIB = 32


def test_page_cache_is_not_hunger(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """Guest 1 reads its disk over and over (MemFree a few MiB, MemAvailable high); guest 2's process grows at
    25 MiB/s. With ~600 MiB of headroom, guest 2 gets it and guest 1 is not grown; once the host has nothing left
    for guest 2, guest 1 gives it page cache (seen before on real guests: a reader kept ~350 MiB of cache while its
    neighbour's process was OOM killed)."""

    def scenario(attempt_dir: Path) -> None:
        title = "a: page-cache reader + a growing guest, host guard ~600 MiB"
        with LabRun(
            lab_prefix,
            attempt_dir,
            n=2,
            max_mib=MAX_MIB,
            current_mib=START_MIB,
            image=guest_image,
            title=title,
            disk_guests=[1],
        ) as run:
            reader, grower = run.lab.names
            run.lab.read_disk(1, loop=True)
            run.wait_until(
                lambda: (run.latest().get(reader, {}).get("unused_mib") or 1e9) < 120, 60, "the reader's cache full"
            )
            run.mark("workload", reader, what="dd /dev/vda in a loop")
            run.start_memcoord()
            t_mc_s = run.t_s()
            guard_mib = _settle_then_guard(run, CACHE_HEADROOM_MIB)
            t_hog_s = run.t_s()
            run.lab.start_hog(2, "grow", page_us=GROWER_PAGE_US)
            run.wait_until(lambda: hog_state(run, 2) == "killed", 150, "the grower's hog OOM killed")
            time.sleep(2)
        tl = run.timeline
        cfg = guest_cfg(tl)
        t_kill_s = analysis.first_event_t_s(tl, "hog_killed", grower)
        assert t_kill_s is not None
        reader_start_mib = analysis.value_at(tl, reader, "current_mib", t_mc_s)
        reader_growth_mib = analysis.peak(tl, reader, "current_mib", t_mc_s) - reader_start_mib
        # Before the hog: once the host has nothing left for the grower, the reader gives its cache down to its low.
        reader_unused_mib = _median(tl, reader, "unused_mib", t_mc_s, t_hog_s)
        reader_usable_mib = _median(tl, reader, "usable_mib", t_mc_s, t_hog_s)
        reader_usable_hog_mib = _median(tl, reader, "usable_mib", t_hog_s, t_kill_s)
        reader_grows = [a for a in tl.events_of(ACTION_EVENT, reader) if a["action"] == Action.GROW]
        reader_gave = [
            a
            for a in tl.events_of(ACTION_EVENT, reader)
            if a.get("rule") == Rule.COMFORT and t_hog_s <= a["t_s"] <= t_kill_s
        ]
        served = _served(tl, grower, t_hog_s, t_kill_s)
        kill_at_mib = analysis.value_at(tl, grower, "current_mib", t_kill_s)
        hog_at_kill_mib = next(e["hog_mib"] for e in tl.events_of("hog_killed", grower))
        lowest = host_lowest(tl, t_hog_s, t_kill_s)
        print(
            f"\na: guard {guard_mib} MiB (headroom ~{CACHE_HEADROOM_MIB} MiB); reader before the hog: unused "
            f"{reader_unused_mib:.0f} MiB, usable {reader_usable_mib:.0f} MiB (medians; usable while the hog ran "
            f"{reader_usable_hog_mib:.0f} MiB), size {reader_start_mib:.0f} MiB at memcoord's start, grown by "
            f"{reader_growth_mib:.0f} MiB ({len(reader_grows)} grow actions), gave the grower page cache "
            f"{_moves(reader_gave)}; "
            f"grower: {served}; hog OOM killed at {hog_at_kill_mib} MiB with the guest "
            f"at {kill_at_mib:.0f} MiB, "
            f"{t_kill_s - t_hog_s:.0f} s after it started; host lowest {lowest[1]:.0f} MiB "
            f"({lowest[1] - guard_mib:+.0f} vs the guard) at t={lowest[0]} s"
        )

        assert_watched(tl, t_mc_s, t_kill_s)
        # The premise: by MemFree the reader looks starving, by MemAvailable it does not.
        assert reader_unused_mib <= cfg["starving_mib"], f"the reader's cache did not hold ({reader_unused_mib} MiB)"
        assert reader_usable_mib > cfg["starving_mib"], f"the reader is really short of memory ({reader_usable_mib})"
        assert reader_growth_mib <= READER_GROWTH_LIMIT_MIB, (
            f"the page-cache reader was grown by {reader_growth_mib:.0f} MiB: {reader_grows[:3]}"
        )
        _assert_served(served, CACHE_HEADROOM_MIB)
        assert reader_gave, "the reader kept its page cache while the grower, below its low, had nothing from the host"
        # The host guard is test c's subject; here its lowest is printed only.
        # The grower's hog dies where the headroom ends (_assert_served says it got that far); the reader's dd never.
        assert_always(tl, oom_ok={grower: 0.0})

    retry_once_on_outage(scenario, run_dir, guard_sensitive=True)


# -- b. host pressure is relieved -----------------------------------------------------------------------------
READERS = 3
READER_START_MIB = 1024  # each reader fills this with cache: ~800 MiB usable, backed by its QEMU
GUARD_BELOW_MIB = 200  # the guard is set this far below the host's available memory before the pressure ...
DEFICIT_MIB = 500  # ... and the host hog then takes this much more: more than one relief step of one guest
# Issue 10 asks for ~10 s when guests hold enough. Here: memcoord's next tick (<= 1 s), two or three ticks of
# relief steps (256 MiB per guest per tick; what QEMU gives back lags the target), the balloons inflating in
# software-emulated guests (~1-2 s for a few hundred MiB), all on 2 cores shared with 3 vCPUs; plus 1 s of the
# recorder's sampling. 20 s leaves room for a slow stats round on the busy host, not for a missing relief.
RELIEF_BOUND_S = 20.0
HOLD_AFTER_RECOVERY_S = 6  # the host must stay at the guard while the host hog keeps holding


def test_host_pressure_is_relieved(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """Three guests hold ~800 MiB of page cache each; a host process takes the host 500 MiB below the guard.
    memcoord relieves it (journal action `relieve`) within the bound, never below a floor, no OOM kill.

    The production profile (host.target_available_mib) is where guests keep such memory: with the default
    profile an idle guest is already trimmed to below its wasteful line, which leaves relief (which keeps
    twice the starving line free in each guest) almost nothing to take.
    """

    def scenario(attempt_dir: Path) -> None:
        title = "b: host process pushes the host 500 MiB below its guard; three cache-holding guests"
        with LabRun(
            lab_prefix,
            attempt_dir,
            n=READERS,
            max_mib=MAX_MIB,
            current_mib=READER_START_MIB,
            image=guest_image,
            title=title,
            disk_guests=range(1, READERS + 1),
        ) as run:
            names = run.lab.names
            # One at a time: three emulated guests reading at once on 2 cores would each take three times longer.
            for i in range(1, READERS + 1):
                run.lab.wait_read_done(i, run.lab.read_disk(i, mib=READER_START_MIB), timeout_s=60)
            run.mark("workload", what=f"each guest read {READER_START_MIB} MiB of its disk and keeps it cached")
            # Far above the guard and the comfort target: memcoord has no reason to touch the guests yet.
            run.start_memcoord({"host": {"target_available_mib": 2048}})
            time.sleep(3)
            avail_mib = psutil.virtual_memory().available // 2**20
            guard_mib = int(avail_mib - GUARD_BELOW_MIB)
            run.reload_memcoord({"host": {"min_available_mib": guard_mib, "target_available_mib": guard_mib + 100}})
            before = {g: r["current_mib"] for g, r in run.latest().items()}
            usable_before = {g: r["usable_mib"] for g, r in run.latest().items()}
            t_hog_s = run.t_s()
            hog_mib = GUARD_BELOW_MIB + DEFICIT_MIB
            run.mark("workload", what=f"host hog {hog_mib} MiB")
            with HostHog(hog_mib, image=guest_image):
                t_held_s = run.t_s()
                run.wait_until(
                    lambda: any(v >= guard_mib for _, v in _after_dip(run.timeline, t_hog_s, guard_mib)),
                    RELIEF_BOUND_S + 30,
                    "host available below the guard, then back at it",
                )
                time.sleep(HOLD_AFTER_RECOVERY_S)
                t_end_s = run.t_s()
            time.sleep(1)
        tl = run.timeline
        host = [(t, v) for t, v in tl.host_available_mib() if t >= t_hog_s]
        t_dip_s = next((t for t, v in host if v < guard_mib), None)
        assert t_dip_s is not None, "the host hog never took the host below its guard"
        lowest = host_lowest(tl, t_hog_s, t_end_s)
        t_back_s = next((t for t, v in host if t > t_dip_s and v >= guard_mib), None)
        after = [v for t, v in host if t_back_s is not None and t_back_s <= t <= t_end_s]
        relieved = [a for a in tl.events_of(ACTION_EVENT) if a["action"] == Action.RELIEVE and a["t_s"] >= t_hog_s]
        regrown = [a for a in tl.events_of(ACTION_EVENT) if a["action"] == Action.GROW and a["t_s"] >= t_hog_s]
        # Without memcoord the host would have ended this far below its guard: relief races the hog, so the
        # recorder's lowest sample shows less.
        pressure_mib = guard_mib - (analysis.value_at(tl, names[0], "host_available_mib", t_hog_s) - hog_mib)
        given_mib = {g: before[g] - analysis.minimum(tl, g, "current_mib", t_hog_s, t_end_s) for g in names}
        print(
            f"\nb: guard {guard_mib} MiB; readers at {sorted(before.values())} MiB, usable "
            f"{sorted(usable_before.values())} MiB; host hog holding at t={t_held_s} s; host first below the guard "
            f"at t={t_dip_s} s, lowest {lowest[1]:.0f} MiB ({guard_mib - lowest[1]:.0f} below) at t={lowest[0]} s, "
            f"back at the guard {None if t_back_s is None else round(t_back_s - t_dip_s, 1)} s after the dip; "
            f"then lowest {min(after, default=float('nan')):.0f} MiB; {len(relieved)} relieve actions "
            f"({_moves(relieved)}); given back per guest "
            f"{ {g: round(v) for g, v in given_mib.items()} } MiB; pressure without relief {pressure_mib:.0f} MiB "
            f"below the guard; grown while the host hog held: {_moves(regrown)}"
        )

        assert_watched(tl, t_hog_s, t_end_s)
        # The premise: the host process took the host clearly below its guard (other processes on this shared
        # host may have freed memory meanwhile; then the scenario is void and says so).
        assert pressure_mib >= DEFICIT_MIB / 2, (
            f"the host hog took the host only {pressure_mib:.0f} MiB below the guard"
        )
        assert relieved, "memcoord took no relieve action while the host was below its guard"
        assert t_back_s is not None and t_back_s - t_dip_s <= RELIEF_BOUND_S, (
            f"host back at the guard {t_back_s and round(t_back_s - t_dip_s, 1)} s after the dip (<= {RELIEF_BOUND_S})"
        )
        assert min(after) >= guard_mib - HOST_DRIFT_MIB, f"host fell to {min(after)} MiB after its recovery"
        assert_always(tl)  # nobody below the floor, no OOM kill at all

    # Not guard_sensitive: that check counts host memory taken by others than the guests, which here is the
    # scenario's own host hog; the pressure premise above answers for the environment instead.
    retry_once_on_outage(scenario, run_dir)


def _after_dip(tl: Timeline, t_from_s: float, guard_mib: float) -> list[tuple[float, float]]:
    """The host samples from its first one below the guard on (none before the pressure shows)."""
    host = [(t, v) for t, v in tl.host_available_mib() if t >= t_from_s]
    first = next((i for i, (_, v) in enumerate(host) if v < guard_mib), None)
    return [] if first is None else host[first + 1 :]


# -- c. the headroom that exists ------------------------------------------------------------------------------
HEADROOM_MIB = 800  # the host 800 MiB above its guard: the grower should get most of it


def test_starving_guest_gets_the_headroom_that_exists(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """One guest's process grows at 25 MiB/s next to three idle 512 MiB guests, ~800 MiB above the guard: it
    gets most of those 800 MiB before its process is OOM killed, and the host stays at its guard."""

    def scenario(attempt_dir: Path) -> None:
        title = "c: one 25 MiB/s grower, three idle, host 800 MiB above its guard"
        with LabRun(
            lab_prefix, attempt_dir, n=4, max_mib=MAX_MIB, current_mib=START_MIB, image=guest_image, title=title
        ) as run:
            grower, *_idle = run.lab.names
            run.start_memcoord()
            guard_mib = _settle_then_guard(run, HEADROOM_MIB)
            t_hog_s = run.t_s()
            start_mib = run.latest()[grower]["current_mib"]
            run.lab.start_hog(1, "grow", page_us=GROWER_PAGE_US)
            # Killed where the guard stops it; or, if the guard does not hold, past it (the assertions say so).
            run.wait_until(
                lambda: (
                    hog_state(run, 1) == "killed" or run.latest()[grower]["current_mib"] > start_mib + 2 * HEADROOM_MIB
                ),
                150,
                "the grower's hog OOM killed",
            )
            time.sleep(2)
        tl = run.timeline
        t_kill_s = analysis.first_event_t_s(tl, "hog_killed", grower)
        t_end_s = t_kill_s if t_kill_s is not None else tl.rows[-1]["t_s"]
        served = _served(tl, grower, t_hog_s, t_end_s)
        kill = tl.events_of("hog_killed", grower)
        lowest = host_lowest(tl, t_hog_s, t_end_s)
        took = _guests_took_mib(tl, t_hog_s, t_end_s)
        most_took = max(took, key=lambda p: p[1])
        took_at_lowest = dict(took).get(lowest[0], float("nan"))
        others_mib = analysis.value_at(tl, grower, "host_available_mib", t_hog_s) - lowest[1] - took_at_lowest
        print(
            f"\nc: guard {guard_mib} MiB (headroom ~{HEADROOM_MIB} MiB); grower: {served}; hog "
            + (
                f"OOM killed at {kill[0]['hog_mib']} MiB with the guest at "
                f"{analysis.value_at(tl, grower, 'current_mib', t_kill_s):.0f} MiB, {t_kill_s - t_hog_s:.0f} s in"
                if kill
                else "not killed"
            )
            + f"; host lowest {lowest[1]:.0f} MiB ({lowest[1] - guard_mib:+.0f} vs the guard) at t={lowest[0]} s, "
            f"when the guests had taken {took_at_lowest:.0f} MiB and other processes {others_mib:.0f} MiB; the guests "
            f"took at most {most_took[1]:.0f} MiB (t={most_took[0]} s)"
        )

        assert_watched(tl, t_hog_s, t_end_s)
        _assert_served(served, HEADROOM_MIB)
        # The guard, as memcoord answers for it: at every sample its guests had taken no more than the headroom
        # there was then: H, plus what other processes on this shared host had freed since (memcoord rightly
        # hands that out too), never minus what they took (relief cannot take that back from a starving grower
        # and idle guests at their buffers; 60-130 MiB either way over a run was seen, 1.4 GiB freed once).
        avail_start_mib = analysis.value_at(tl, grower, "host_available_mib", t_hog_s)
        host = dict(tl.host_available_mib())
        for t_s, took_mib in took:
            if t_s not in host:
                continue
            freed_by_others_mib = max(0.0, host[t_s] + took_mib - avail_start_mib)
            allowed_mib = HEADROOM_MIB + freed_by_others_mib + QEMU_DRIFT_MIB
            assert took_mib <= allowed_mib, (
                f"the guests took {took_mib:.0f} MiB of the host at t={t_s} s, when ~{allowed_mib - QEMU_DRIFT_MIB:.0f}"
                f" MiB was there ({HEADROOM_MIB} + {freed_by_others_mib:.0f} freed by other processes)"
            )
        assert_always(tl, oom_ok={grower: 0.0})  # where the headroom ends: _assert_served says how far it got

    retry_once_on_outage(scenario, run_dir, guard_sensitive=True)


# d. A balloon set elsewhere. What the guest's programs hold: a 512 MiB guest is then below its starving line
# (150 MiB usable), but not out of memory at 490 MiB either.
HOLD_MIB = 240
ADMIN_MIB = 490  # below where memcoord's grow set out from (512): the balloon is no longer on its way there
D_INTERVAL_S = 3.0  # ticks 3 s apart: stale after 3 x 1 s stats period + 2 x 3 s = 9 s
AFTER_S = 5  # how long the run goes on after memcoord's second move


def test_a_balloon_set_elsewhere_is_taken_where_it_is(guest_image: GuestImage, lab_prefix: str, run_dir: Path) -> None:
    """memcoord grows a starving guest; before its balloon gets there, an admin sets it lower (`virsh setmem`).

    The guest is paused while memcoord grows it, so its balloon cannot move before the admin's setmem: the
    balloon then goes to the admin's size, below where memcoord's grow set out from. memcoord must take the
    guest where its balloon is, and grow it again from there at its next ticks; believing its own target, it
    would leave a starving guest alone until that target's stale time (9 s here) had passed."""

    def scenario(attempt_dir: Path) -> None:
        title = "d: a balloon set elsewhere while memcoord's grow is on its way"
        with LabRun(lab_prefix, attempt_dir, n=1, max_mib=MAX_MIB, current_mib=START_MIB, image=guest_image,
                    title=title) as run:  # fmt: skip
            (name,) = run.lab.names
            dom = run.lab.guest(1).domain
            run.lab.start_hog(1, "hold", size_mib=HOLD_MIB, hold_s=3600, page_us=20)
            run.wait_until(lambda: hog_state(run, 1) == "holding", 60, "the hog holding")
            time.sleep(2)  # the guest's next stats report shows it
            dom.suspend()
            t_suspended_s = run.t_s()
            run.mark("suspended", name)
            run.start_memcoord({"loop": {"interval_s": D_INTERVAL_S}})
            memcoord = run.memcoord
            assert memcoord is not None
            run.wait_until(lambda: any(a.domain == name for a in memcoord.actions), 15, "memcoord's grow")
            first = memcoord.actions[0]
            at_grow_mib = run.lab.balloon_stats()[name]["balloon.current"] // KIB_PER_MIB
            dom.setMemoryFlags(ADMIN_MIB * KIB_PER_MIB, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            dom.resume()
            t_resumed_s = run.t_s()
            run.mark("admin_setmem", name, to_mib=ADMIN_MIB)
            run.wait_until(lambda: len(memcoord.actions) > 1, 20, "memcoord's next move")
            second = memcoord.actions[1]
            time.sleep(AFTER_S)  # the guest runs on: its balloon, its hog and memcoord are watched a while longer
        tl = run.timeline
        arrived = analysis.first_t_s(tl, name, "current_mib", lambda v: v <= ADMIN_MIB + 4, t_resumed_s)
        print(
            f"\nd: memcoord {first.action} {first.from_mib} -> {first.to_mib} MiB with the balloon held at "
            f"{at_grow_mib} MiB (guest paused); the admin set {ADMIN_MIB} MiB, the balloon there at t={arrived} s; "
            f"memcoord then {second.action} {second.from_mib} -> {second.to_mib} MiB, "
            f"{second.t_mono_s - first.t_mono_s:.1f} s after its first move ({second.reason})"
        )

        # The premise: memcoord grew the guest and its balloon could not follow before the admin's setmem.
        assert (first.action, first.from_mib) == (str(Action.GROW), START_MIB), first
        assert at_grow_mib <= START_MIB + 4, f"the balloon moved to {at_grow_mib} MiB before the admin's setmem"
        assert arrived is not None, f"the balloon never reached the admin's {ADMIN_MIB} MiB"
        # Taken where it is: grown again from the admin's size, within two ticks, long before its first target's
        # stale time.
        assert (second.action, second.rule) == (str(Action.GROW), Rule.NEED), second
        assert abs(second.from_mib - ADMIN_MIB) <= 4, second
        assert second.t_mono_s - first.t_mono_s < 2 * D_INTERVAL_S + 1, (
            f"grown again {second.t_mono_s - first.t_mono_s:.1f} s after its first grow: memcoord waited for a "
            "target nobody was heading to"
        )
        # The always rules hold (a paused guest is not a dead one), and the guest was paused only while this
        # scenario held it (a sample in flight at the resume may show it); it runs on after.
        assert analysis.invariant_violations(tl, floor_mib=guest_cfg(tl)["min_mib"]) == []
        paused = [r["t_s"] for r in tl.for_guest(name) if r["paused"]]
        assert paused, "the recorder never saw the guest paused"
        assert all(t_suspended_s <= t <= t_resumed_s + 1.5 for t in paused), f"paused at {paused}"
        after = [r for r in tl.for_guest(name) if r["t_s"] > t_resumed_s + 1.5]
        assert len(after) >= AFTER_S, f"{len(after)} samples after the resume"

    retry_once_on_outage(scenario, run_dir)


# -- e. a neighbour of a big guest whose ramp the guard holds --------------------------------------------------
E_BIG_MAX_MIB = 8192  # its balloon at the maximum, most of it never touched: what the guard holds while it ramps
E_START_MIB = 512
E_PAGE_US = 390  # 4 KiB per 390 us = 10 MiB/s: both hogs
E_ROOM_MIB = 2560  # the host above its guard: room for both ramps while they run
# The small guest's hog runs until it has taken this much more than the guest had free when it started: without
# growing, the guest would have run out of memory.
E_PAST_MIB = 150


def test_a_neighbour_of_a_big_ramping_guest_survives_past_the_memory_it_had(
    guest_image: GuestImage, lab_prefix: str, run_dir: Path
) -> None:
    """A guest at an 8 GiB balloon, most of it never touched, runs a hog paced at 10 MiB/s: the guard holds what
    its ramp touches in 10 minutes (`policy.RAMP_HOLD_S`; at the pace the hog really keeps under software
    emulation, about 2 GiB). A 512 MiB neighbour's process grows too, on a host 2.5 GiB above its guard: it is fed
    (from the budget, what it is lent, or the big guest's surplus) and runs well past the memory it had, with no
    OOM kill anywhere and the host at its guard: the real-guest counterpart of the simulator's
    `slow-ramp-neighbour` and `accelerating-ramp`. (How much of the budget the hold leaves depends on the ramp the
    big guest's stats show, which the host's load moves: which source feeds the neighbour is printed, not
    asserted; the simulator's scenarios and the policy's unit tests pin each source.)"""

    def scenario(attempt_dir: Path) -> None:
        title = "e: a big guest's ramp held by the guard + a 10 MiB/s neighbour, host 2.5 GiB above its guard"
        with LabRun(
            lab_prefix, attempt_dir, n=2, max_mib=E_BIG_MAX_MIB, current_mib=E_START_MIB, image=guest_image, title=title
        ) as run:
            big, small = run.lab.names
            run.lab.guest(1).domain.setMemoryFlags(E_BIG_MAX_MIB * KIB_PER_MIB, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            run.wait_until(
                lambda: (run.latest().get(big, {}).get("current_mib") or 0) >= E_BIG_MAX_MIB - 8, 60, "big deflated"
            )
            run.lab.start_hog(1, "grow", page_us=E_PAGE_US)
            guard_mib = psutil.virtual_memory().available // 2**20 - E_ROOM_MIB
            run.start_memcoord({"host": {"min_available_mib": guard_mib}})
            t_mc_s = run.t_s()
            time.sleep(BASELINE_S)
            t_hog_s = run.t_s()
            free_mib = run.latest()[small]["usable_mib"]
            run.lab.start_hog(2, "grow", page_us=E_PAGE_US)
            run.wait_until(
                lambda: hog_state(run, 2) == "killed" or (run.latest()[small]["hog_mib"] or 0) >= free_mib + E_PAST_MIB,
                180,
                f"the small guest's hog {E_PAST_MIB} MiB past the {free_mib:.0f} MiB it had free",
            )
            t_end_s = run.t_s()
        tl = run.timeline
        served = _served(tl, small, t_hog_s, t_end_s)
        small_moves = [a for a in tl.events_of(ACTION_EVENT, small) if t_hog_s <= a["t_s"] <= t_end_s]
        big_gave = [a for a in tl.events_of(ACTION_EVENT, big) if a["to_mib"] < a["from_mib"]]
        lowest = host_lowest(tl, t_hog_s, t_end_s)
        print(
            f"\ne: guard {guard_mib} MiB (~{E_ROOM_MIB} MiB above it); small ({free_mib:.0f} MiB free at its hog's "
            f"start): {served}; its moves "
            f"{[(round(a['t_s'] - t_hog_s, 1), a['rule'], a['from_mib'], a['to_mib']) for a in small_moves]}; "
            f"big gave {len(big_gave)} times, down to {min((a['to_mib'] for a in big_gave), default=None)} MiB; "
            f"host lowest {lowest[1]:.0f} MiB ({lowest[1] - guard_mib:+.0f} vs the guard) at t={lowest[0]} s"
        )

        assert_watched(tl, t_mc_s, t_end_s)
        assert not served.killed, f"the small guest's process was OOM killed: {served}"
        assert served.peak_mib > served.start_mib, f"the small guest was not grown: {small_moves}"
        assert lowest[1] >= guard_mib - HOST_DRIFT_MIB, f"host {lowest[1]:.0f} MiB, guard {guard_mib} MiB"
        assert_always(tl)

    retry_once_on_outage(scenario, run_dir, guard_sensitive=True)


# -- f. relief asks a guest above its high again on its next report ---------------------------------------------
F_MIB = 2048  # one guest, at its maximum
F_UNTOUCHED_MIB = 40  # it touches all it has free but this once and frees it: QEMU backs it
F_GUARD_BELOW_MIB = 300  # the guard this far below the host's available memory before the host hog ...
F_DEFICIT_MIB = 700  # ... which then takes this much more: about three relief steps (256 MiB) of the one guest
F_BOUND_S = 40.0


def test_relief_asks_a_guest_above_its_high_again_on_its_next_report(
    guest_image: GuestImage, lab_prefix: str, run_dir: Path
) -> None:
    """One idle guest holds GiBs of backed free memory above its high; a host process takes the host 700 MiB below
    its guard. Relief takes a step (256 MiB) from it and asks it for the next on its next report, which counts its
    use by its own total (MemTotal, which the balloon's move does not change) and shows that use steady: steps
    a second or so apart. Waiting for a report from two seconds after each lowering made them 3 s apart here, the
    host back at its guard 9 s after the dip (4 s now, one run each)."""

    def scenario(attempt_dir: Path) -> None:
        title = "f: a host process takes the host 700 MiB below its guard; one guest with GiBs backed and free"
        with LabRun(lab_prefix, attempt_dir, n=1, max_mib=F_MIB, current_mib=F_MIB, image=guest_image,
                    title=title) as run:  # fmt: skip
            (name,) = run.lab.names
            run.wait_until(lambda: bool(run.latest().get(name, {}).get("usable_mib")), 30, "stats")
            touch_mib = int(run.latest()[name]["usable_mib"]) - F_UNTOUCHED_MIB
            run.lab.start_hog(1, "hold", size_mib=touch_mib, hold_s=1, page_us=40)
            run.wait_until(lambda: hog_state(run, 1) == "exited", 120, "the guest touched its memory")
            avail_mib = psutil.virtual_memory().available // 2**20
            guard_mib = int(avail_mib - F_GUARD_BELOW_MIB)
            # The host above its comfort target: no idle reclaim, only relief lowers the guest.
            run.start_memcoord({"host": {"min_available_mib": guard_mib, "target_available_mib": guard_mib + 100}})
            time.sleep(BASELINE_S)
            t_hog_s = run.t_s()
            with HostHog(F_GUARD_BELOW_MIB + F_DEFICIT_MIB, image=guest_image):
                run.wait_until(
                    lambda: any(v >= guard_mib for _, v in _after_dip(run.timeline, t_hog_s, guard_mib)),
                    F_BOUND_S,
                    "host available below the guard, then back at it",
                )
                t_end_s = run.t_s()
        tl = run.timeline
        host = [(t, v) for t, v in tl.host_available_mib() if t >= t_hog_s]
        t_dip_s = next((t for t, v in host if v < guard_mib), None)
        t_back_s = next((t for t, v in host if t_dip_s is not None and t > t_dip_s and v >= guard_mib), None)
        relieved = [
            a for a in tl.events_of(ACTION_EVENT, name) if a["action"] == Action.RELIEVE and a["t_s"] >= t_hog_s
        ]
        gaps_s = [round(b["t_s"] - a["t_s"], 1) for a, b in itertools.pairwise(relieved)]
        print(
            f"\nf: guard {guard_mib} MiB; host first below it at t={t_dip_s} s, back "
            f"{None if t_back_s is None or t_dip_s is None else round(t_back_s - t_dip_s, 1)} s later; relief "
            f"{_moves(relieved)}, {gaps_s} s apart"
        )

        assert_watched(tl, t_hog_s, t_end_s)
        assert t_dip_s is not None, "the host hog never took the host below its guard"
        assert len(relieved) >= 2, f"relief took {_moves(relieved)}: the premise is several steps of one guest"
        assert min(gaps_s) < 1.5, f"relief asked the guest again only after {gaps_s} s"
        assert_always(tl)

    retry_once_on_outage(scenario, run_dir)
