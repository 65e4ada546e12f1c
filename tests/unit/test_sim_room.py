"""The simulator's VM starts and host PSI (issue 23): a guest that boots during the run, the make-room hook that
holds its boot until memcoord has made the room, and the host's PSI from its thrash line."""

from __future__ import annotations

from pathlib import Path

from memcoord.core.config import Config
from memcoord.core.model import mib_to_kib
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from memcoord.sim.run import run
from memcoord.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
START_S = 1_000_000.0


def test_a_guest_that_boots_later_is_not_running_nor_holding_memory_before() -> None:
    late = SimGuest("late", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024), boot_s=START_S + 5)
    hv = SimulatedHypervisor([late], host_total_kib=mib_to_kib(8192), start_s=START_S)
    assert hv.sample().domains == () and hv.host_available_kib() == mib_to_kib(8192)
    hv.hold_start("late", True)
    hv.advance(10)
    assert hv.sample().domains == ()  # held past its boot time
    hv.hold_start("late", False)
    hv.advance(0.1)
    assert [d.name for d in hv.sample().domains] == ["late"]
    assert hv.host_available_kib() < mib_to_kib(8192)


def test_host_psi_rises_below_the_thrash_line_as_an_avg10_and_falls_above_it() -> None:
    guest = SimGuest("g", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(4096))
    hv = SimulatedHypervisor(
        [guest],
        host_total_kib=mib_to_kib(8192),
        host_other_used_kib=mib_to_kib(3072),
        thrash_below_kib=mib_to_kib(2048),
    )
    assert SimulatedHypervisor([], host_total_kib=1024).sample().host.pressure_some_avg10 is None
    guest.rss_kib = mib_to_kib(4096)  # 1024 MiB available: half way below the line, stalling half the time
    hv.advance(1)
    one_s = hv.sample().host.pressure_some_avg10
    for _ in range(29):
        hv.advance(1)
    thirty_s = hv.sample().host.pressure_some_avg10
    assert one_s is not None and thirty_s is not None
    assert 3 < one_s < 8 and 45 < thirty_s <= 50  # 1 - e^(-1/10) and 1 - e^(-3) of the 50 % stall share
    guest.target_kib = mib_to_kib(1024)
    for _ in range(60):
        hv.advance(1)
    assert (hv.sample().host.pressure_some_avg10 or 0) < 1


def test_with_the_hook_the_new_guest_waits_for_its_room_and_the_host_stays_above_its_guard() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "vm-start.toml")
    prod = Config.model_validate({"host": {"target_available_mib": 3072}, "guest": {"peak_hold_s": 600}})
    with_hook = run(scenario, prod)
    no_hook = scenario.model_copy(update={"host": scenario.host.model_copy(update={"make_room": False})})
    without = run(no_hook, prod)
    assert 0 < with_hook.boot_waits_s["new"] <= scenario.host.hook_timeout_s + scenario.step_s
    assert without.boot_waits_s == {}
    assert with_hook.host_below_guard_s == 0 and without.host_below_guard_s > 0
    assert with_hook.oom_kills == 0 == without.oom_kills


def test_the_pressure_signal_relieves_a_host_that_stalls_above_its_guard() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "host-thrash.toml")
    prod = {"host": {"target_available_mib": 3072}, "guest": {"peak_hold_s": 600}}
    off = run(scenario, Config.model_validate(prod))
    on = run(scenario, Config.model_validate({**prod, "host": {**prod["host"], "pressure_relief_pct": 10.0}}))
    assert off.host_pressure_s is not None and on.host_pressure_s is not None
    assert off.host_below_guard_s == 0 == on.host_below_guard_s  # the guard alone sees nothing wrong
    assert on.host_pressure_s < off.host_pressure_s / 5
    assert on.oom_kills == 0 and on.starving_guest_s == 0
