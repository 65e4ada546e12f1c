"""A guest that does not give when asked (its lowering refused by libvirt, or its balloon not following an accepted
one) balks for a while: relief asks it after every other guest, and each source for the starving after the others
(policy.NO_PROGRESS_STALE_PERIODS). Without that, the one guest with the most to give was asked first tick after
tick, and the host stayed below its guard while another guest could give. Only the order changes: when it is the
only one that can give, it is asked as before. And a guest about to start is not told of room on a relief that
was refused."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from memcoord.admin import makeroom, status
from memcoord.core.config import Config, parse
from memcoord.core.model import Action, ApplyResult, Change, GuestClass, Rule, mib_to_kib
from memcoord.core.policy import Pending, PolicyState, applied, decide, no_progress_pause_s
from memcoord.core.step import step
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import Service
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import Hog, Idle

MIB = mib_to_kib(1)
SIM_START_S = 1_000_000.0  # SimulatedHypervisor's default start
PRODUCTION = parse('[host]\nprofile = "production"\n')  # idle guests give only under need: relief must find them


class _Refuses:
    """A simulated host whose hypervisor refuses the lowerings of one domain: every one (a guest being migrated; an
    ACL), or only the first `times`."""

    def __init__(self, sim: SimulatedHypervisor, name: str, times: int | None = None) -> None:
        self.sim, self.name, self.times = sim, name, times
        self.refused: list[Change] = []

    def __getattr__(self, attr: str) -> object:
        return getattr(self.sim, attr)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        out = []
        for c in changes:
            if c.domain == self.name and c.delta_kib < 0 and (self.times is None or len(self.refused) < self.times):
                self.refused.append(c)
                out.append(ApplyResult(c, "Requested operation is not valid: domain is being migrated"))
            else:
                out.extend(self.sim.apply([c]))
        return out


def _host_below_guard(big: SimGuest, other_used_mib: int = 1200) -> SimulatedHypervisor:
    """A host 300 MiB below its 1024 MiB guard. big holds 3 GiB, nearly all of it idle and backed by QEMU (the most
    to give); "giver", 2 GiB of which its programs use other_used_mib, can give the host what it lacks on its own."""
    giver = SimGuest("giver", max_kib=4096 * MIB, target_kib=2048 * MIB, rss_kib=2048 * MIB,
                     workload=Idle(other_used_mib * MIB))  # fmt: skip
    return SimulatedHypervisor([big, giver], host_total_kib=8192 * MIB, host_other_used_kib=(8192 - 5120 - 724) * MIB)


def _run(hv: Any, sim: SimulatedHypervisor, config: Config, ticks: int) -> tuple[list[int], list[Change]]:
    """ticks of the loop, a second apart: the host's available MiB after each, and every change sent."""
    state: Any = PolicyState()
    available_mib, sent = [], []
    for _ in range(ticks):
        done = step(hv, config, state)
        state = done.state
        sent += [r.change for r in done.results]
        sim.advance(1.0)
        available_mib.append(sim.host_available_kib() // MIB)
    return available_mib, sent


def test_a_balloon_that_does_not_move_is_not_asked_again_while_another_guest_can_give() -> None:
    stuck = SimGuest("stuck", max_kib=4096 * MIB, target_kib=3072 * MIB, rss_kib=3072 * MIB, inflates=False)
    sim = _host_below_guard(stuck)
    pause_s = no_progress_pause_s(PRODUCTION)
    available_mib, sent = _run(sim, sim, PRODUCTION, int(pause_s))
    relieved = [c for c in sent if c.domain == "stuck" and c.action is Action.RELIEVE]
    # Relief asks it once; its balloon stays put for the stale time; then the giver gives, and the host is above its
    # guard for the rest of the pause (on main it stayed 44 MiB below, "stuck" relieved every stale time).
    assert len(relieved) == 1, relieved
    above = [i for i, mib in enumerate(available_mib) if mib >= 1024]
    assert above and above[0] <= PRODUCTION.stale_after_s + 4, available_mib
    assert all(mib >= 1024 for mib in available_mib[above[0] :]), available_mib
    assert stuck.current_kib == 3072 * MIB


def test_a_guest_whose_lowering_is_refused_is_asked_again_only_after_the_pause() -> None:
    """Relief is refused on the first two ticks (one refusal is no evidence: on the second tick it is still the
    first asked); then it balks, the giver gives, and the host is above its guard. On main relief asked it every
    tick, the host below its guard throughout. (Its reclaim, not a safety move, is asked as on main.)"""
    big = SimGuest("refuser", max_kib=4096 * MIB, target_kib=3072 * MIB, rss_kib=3072 * MIB)
    sim = _host_below_guard(big)
    hv = _Refuses(sim, "refuser")
    pause_s = no_progress_pause_s(PRODUCTION)
    available_mib, _sent = _run(hv, sim, PRODUCTION, int(pause_s) + 10)
    relieved = [c for c in hv.refused if c.action is Action.RELIEVE]
    assert len(relieved) == 2, relieved
    assert all(mib >= 1024 for mib in available_mib[3:]), available_mib


def test_make_room_is_not_told_of_room_on_a_relief_that_was_refused(tmp_path: Path) -> None:
    """A VM about to start asks for 300 MiB; only "refuser" can give it, and its lowering is refused. The plan
    counted the relief; the answer must not: the asker hears "short" when its wait is over, never "room"."""
    big = SimGuest("refuser", max_kib=4096 * MIB, target_kib=3072 * MIB, rss_kib=3072 * MIB)
    sim = SimulatedHypervisor([big], host_total_kib=8192 * MIB, host_other_used_kib=(8192 - 3072 - 1224) * MIB)
    hv = _Refuses(sim, "refuser")
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[room]\nsocket = "{tmp_path / "room.sock"}"\nhold_s = 30\n[host]\nguest_overhead_mib = 0\n')
    service = Service(cfg, parse(cfg.read_text()), lambda _uri: hv, observer=Observer(publish=False))  # type: ignore[arg-type,return-value]
    service.room.configure(service.config)
    answers: list[dict[str, Any]] = []
    asker = threading.Thread(
        target=lambda: answers.append(makeroom.ask(str(tmp_path / "room.sock"), 300 * MIB, None, 2.0))
    )
    try:
        assert service.tick()
        asker.start()
        while asker.is_alive():
            service._sleep(1.0)
            assert service.tick()
            sim.advance(1.0)
        asker.join(5)
    finally:
        service.room.close()
        service._close_wakeup()
    assert hv.refused and all(c.action is Action.RELIEVE for c in hv.refused), hv.refused
    assert answers and answers[0]["state"] == "short", answers


def test_a_sole_giver_refused_once_still_relieves_the_host_at_once() -> None:
    """One transient refusal (a QEMU monitor hiccup) of the only guest that can give: it is asked again on the
    next tick it can be, as before (balking while nobody else could give left the host below its guard 30 s)."""
    only = SimGuest("only", max_kib=4096 * MIB, target_kib=3072 * MIB, rss_kib=3072 * MIB, workload=Idle(600 * MIB))
    sim = SimulatedHypervisor([only], host_total_kib=8192 * MIB, host_other_used_kib=(8192 - 3072 - 724) * MIB)
    hv = _Refuses(sim, "only", times=1)
    available_mib, _sent = _run(hv, sim, PRODUCTION, 20)
    assert len(hv.refused) == 1
    assert sum(mib < 1024 for mib in available_mib) <= 4, available_mib


def test_a_sole_giver_refused_once_still_gives_to_a_starving_guest() -> None:
    """The giver's first lowering (a routine reclaim) is refused once; then the hog ramps on a host with no budget,
    and the giver is the only guest that can give: it gives, and no process is killed."""
    ramp = Hog(40 * MIB, start_s=SIM_START_S + 5, limit_kib=1400 * MIB)
    hog = SimGuest("hog", max_kib=4096 * MIB, target_kib=1024 * MIB, workload=ramp)
    giver = SimGuest("giver", max_kib=4096 * MIB, target_kib=2048 * MIB, rss_kib=2048 * MIB, workload=Idle(200 * MIB))
    sim = SimulatedHypervisor([hog, giver], host_total_kib=8192 * MIB, host_other_used_kib=4096 * MIB)
    hv = _Refuses(sim, "giver", times=1)
    state: Any = PolicyState()
    free_mib = []
    for _ in range(60):
        state = step(hv, Config(), state).state
        sim.advance(1.0)
        free_mib.append((hog.current_kib - hog.used_kib) // MIB)
    assert len(hv.refused) == 1
    assert hog.oom_kills == 0 and hog.current_kib > 1400 * MIB, (hog.oom_kills, hog.current_kib // MIB)
    # As on main: one refusal costs it nothing (on main, 407 MiB free at the least).
    assert min(free_mib) >= 400, free_mib


def test_refused_lowerings_are_counted_a_refused_growth_is_not_and_one_that_lands_starts_again() -> None:
    lowering = Change("a", Action.RELIEVE, 2048 * MIB, 1792 * MIB, "test")
    growth = Change("b", Action.GROW, 1024 * MIB, 1280 * MIB, "test")
    never_sent = Change("c", Action.RELIEVE, 2048 * MIB, 1792 * MIB, "test")
    refused = [ApplyResult(lowering, "refused"), ApplyResult(growth, "refused"),
               ApplyResult(never_sent, "domain gone", sent=False)]  # fmt: skip
    state = applied(PolicyState(), refused, 100.0)
    assert state.refusals == {"a": (100.0, 1)} and not state.no_progress_at_s and not state.pending
    state = applied(state, refused, 101.0)
    assert state.refusals == {"a": (101.0, 2)} and state.no_progress_at_s == {"a": 101.0}
    assert applied(state, [ApplyResult(lowering)], 102.0).refusals == {}
    # A lowering whose outcome is unknown may have landed: it starts the count again, and is waited for.
    maybe = applied(state, [ApplyResult(lowering, "no answer", unknown=True)], 102.0)
    assert maybe.refusals == {} and not maybe.pending["a"].confirmed


def test_one_passing_refusal_costs_a_neighbour_nothing() -> None:
    """big, far above its high, has one lowering refused just as the host falls 150 MiB below its guard; b sits
    inside its band. big is asked again on the next tick and gives; b keeps its buffer, and survives the 480 MiB
    burst it makes a few seconds later (when one refusal made big balk, relief took 256 MiB from b, and the burst
    killed a process in b)."""

    class Sum:
        def __init__(self, *parts: Any) -> None:
            self.parts = parts

        def demand_kib(self, now_s: float) -> int:
            return sum(p.demand_kib(now_s) for p in self.parts)

        def killed(self, now_s: float) -> None:
            for p in self.parts:
                p.killed(now_s)

    config = parse('[host]\nprofile = "production"\nguest_overhead_mib = 0\n')
    big = SimGuest("big", max_kib=4096 * MIB, target_kib=3072 * MIB, rss_kib=3072 * MIB, workload=Idle(600 * MIB))
    burst = Hog(300 * MIB, start_s=SIM_START_S + 16, limit_kib=480 * MIB)
    b = SimGuest(
        "b", max_kib=4096 * MIB, target_kib=2048 * MIB, rss_kib=2048 * MIB, workload=Sum(Idle(1500 * MIB), burst)
    )
    sim = SimulatedHypervisor([big, b], host_total_kib=8192 * MIB, host_other_used_kib=(8192 - 5120 - 1500) * MIB)
    hv = _Refuses(sim, "big", times=1)
    hv.name = ""  # armed at t = 10
    state: Any = PolicyState()
    b_lowered = []
    for t in range(40):
        if t == 10:
            sim.host_other_used_kib += sim.host_available_kib() - (1024 - 150) * MIB
            hv.name = "big"
        done = step(hv, config, state)
        state = done.state
        b_lowered += [c for c in done.plan.changes if c.domain == "b" and c.delta_kib < 0]
        sim.advance(1.0)
    assert len(hv.refused) == 1
    assert not b_lowered and b.oom_kills == 0, (b_lowered, b.oom_kills)


def test_a_balking_guest_gives_to_the_starving_after_the_others_and_still_gives_when_it_is_the_only_one() -> None:
    """No budget: a starving guest gets the others' surplus. x balks and has the most; y does not: y gives first.
    With y gone, x gives all the same."""
    starving = SimGuest("s", max_kib=4096 * MIB, target_kib=1024 * MIB, workload=Idle(950 * MIB))
    x = SimGuest("x", max_kib=4096 * MIB, target_kib=3072 * MIB, rss_kib=3072 * MIB, workload=Idle(300 * MIB))
    y = SimGuest("y", max_kib=4096 * MIB, target_kib=2048 * MIB, rss_kib=2048 * MIB, workload=Idle(300 * MIB))
    for guests, giver in (([starving, x, y], "y"), ([starving, x], "x")):
        used_kib = sum(g.target_kib for g in guests)
        sim = SimulatedHypervisor(
            guests, host_total_kib=8192 * MIB, host_other_used_kib=8192 * MIB - used_kib - 1024 * MIB
        )
        sim.ensure_stats_period([g.name for g in guests], 1)
        sim.advance(1.0)  # their first reports: x and y busy (not reclaimed), s starving
        plan, _ = decide(sim.sample(), PolicyState(no_progress_at_s={"x": sim.now_s}), Config())
        assert plan.classes["s"] is GuestClass.STARVING and plan.balking == {"x"}
        givers = [c.domain for c in plan.changes if c.why is not None and c.why.rule is Rule.SURPLUS]
        assert givers == [giver], plan.changes


def test_a_small_lowering_that_arrived_short_is_not_taken_for_a_balloon_that_did_not_move() -> None:
    """6 MiB asked, 3 MiB given: within the tolerance of both its target and its start, it arrived."""
    g = SimGuest("g", max_kib=4096 * MIB, target_kib=2048 * MIB, rss_kib=2048 * MIB, workload=Idle(1200 * MIB))
    sim = SimulatedHypervisor([g], host_total_kib=8192 * MIB)
    state: Any = PolicyState()
    for _ in range(3):
        state = step(sim, Config(), state).state
        sim.advance(1.0)
    start_kib = g.current_kib
    g.current_kib = g.target_kib = start_kib - 3 * MIB
    state = dataclasses.replace(state, pending={"g": Pending(start_kib - 6 * MIB, sim.now_s - 10.0, start_kib)})
    _plan, state = decide(sim.sample(), state, Config())
    assert state.no_progress_at_s == {}


def test_the_journal_says_once_when_a_guest_starts_to_give_last_and_once_when_it_ends_and_status_shows_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its balloon is stuck for good, then works again: one warning for the whole spell (a balloon stuck for good
    balks again each time its pause ends), one line once it has not balked for a whole pause; `memcoord status`
    shows it meanwhile."""
    stuck = SimGuest("stuck", max_kib=4096 * MIB, target_kib=3072 * MIB, rss_kib=3072 * MIB, inflates=False)
    sim = _host_below_guard(stuck)
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[status]\npath = "{tmp_path / "state.json"}"\n[host]\nprofile = "production"\n')
    # The service's clock is the simulator's: how long since a guest last balked is measured on it.
    service = Service(cfg, parse(cfg.read_text(), cfg), lambda _uri: sim, observer=Observer(), clock=lambda: sim.now_s)
    caplog.set_level(logging.INFO, logger="memcoord")
    pause_s = int(no_progress_pause_s(service.config))
    shown, balked_again = [], False
    for tick in range(5 * pause_s):
        assert service.tick()
        sim.advance(1.0)
        view = json.loads((tmp_path / "state.json").read_text())
        shown.append(any(line.startswith("GIVES LAST: stuck ") for line in status.render(view)))
        if tick > pause_s + 10 and shown[-1]:
            balked_again = True
        if tick == 2 * pause_s:
            stuck.inflates = True
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("stuck: ")]
    assert balked_again, shown  # the production profile's reclaim asked again after the first pause: stuck again
    assert [level for level, _ in said] == [logging.WARNING, logging.INFO], said
    assert "did not give memory when asked" in said[0][1] and "for up to 30 s" in said[0][1], said
    assert not shown[0] and not shown[-1], shown


def test_a_lowering_of_unknown_outcome_that_its_balloon_does_not_follow_makes_no_guest_balk() -> None:
    """No answer in time (libvirtd lost the connection): the call may never have reached QEMU, so a balloon that
    stays put says nothing of the guest."""
    g = SimGuest("g", max_kib=4096 * MIB, target_kib=3072 * MIB, rss_kib=3072 * MIB, workload=Idle(600 * MIB))
    sim = SimulatedHypervisor([g], host_total_kib=8192 * MIB, host_other_used_kib=(8192 - 3072 - 724) * MIB)

    class NoAnswer:
        def __getattr__(self, attr: str) -> object:
            return getattr(sim, attr)

        def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
            return [ApplyResult(c, "setMemory: no answer in 1.0 s", unknown=True) for c in changes]

    state: Any = PolicyState()
    balking, asked = [], []
    for _ in range(int(PRODUCTION.stale_after_s) + 4):
        done = step(NoAnswer(), PRODUCTION, state)
        state = done.state
        balking.append(done.plan.balking)
        asked += [c for c in done.plan.changes if c.delta_kib < 0]
        sim.advance(1.0)
    assert asked and g.current_kib == 3072 * MIB  # relief asked; its balloon stayed put
    assert not any(balking), balking


def test_when_every_giver_balks_relief_still_takes_from_above_high_first() -> None:
    """a sits between its low and high (1312 MiB above its low), b 174 MiB above its high; the host lacks 84 MiB
    (20 below its guard, and relief's margin). Both balk: b gives, as when neither does, and a keeps its buffer."""
    a = SimGuest("a", max_kib=16384 * MIB, target_kib=8192 * MIB, rss_kib=8192 * MIB, workload=Idle(6000 * MIB))
    b = SimGuest("b", max_kib=4096 * MIB, target_kib=2048 * MIB, rss_kib=2048 * MIB, workload=Idle(1200 * MIB))
    a.overhead_kib = b.overhead_kib = 128 * MIB  # as config's guest_overhead_mib: b's relief reaches the host
    sim = SimulatedHypervisor([a, b], host_total_kib=32768 * MIB, host_other_used_kib=(32768 - 10496 - 1004) * MIB)
    sim.ensure_stats_period(["a", "b"], 1)
    state: Any = PolicyState()
    for balking in (False, False, False, True):  # nothing applied: the host stays short
        sim.advance(1.0)
        if balking:
            state = dataclasses.replace(state, no_progress_at_s={"a": sim.now_s, "b": sim.now_s})
        plan, state = decide(sim.sample(), state, PRODUCTION)
        assert plan.balking == ({"a", "b"} if balking else set())
        assert [(c.domain, c.action) for c in plan.changes] == [("b", Action.RELIEVE)], plan.changes
