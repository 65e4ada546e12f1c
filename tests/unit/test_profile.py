"""The profile and the host-scaled guard as the daemon's tick applies them (step(), the loop the daemon and the
simulator share), on the simulated hypervisor: one key switches the profile, and the values follow the host."""

from __future__ import annotations

from memcoord.core.config import Config, parse
from memcoord.core.model import mib_to_kib
from memcoord.core.policy import PolicyState
from memcoord.core.step import step
from memcoord.sim.host import Idle, SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import Hog

GIB_KIB = 2**20


def _run(config: Config, hv: SimulatedHypervisor, ticks: int) -> None:
    hv.ensure_stats_period(list(hv.guests), 1)
    state = PolicyState()
    for _ in range(ticks):
        hv.advance(1.0)
        state = step(hv, config, state).state


def _idle_host() -> SimulatedHypervisor:
    """Two idle 4 GiB guests using 500 MiB each on a 64 GiB host with plenty free."""
    guests = [
        SimGuest(n, max_kib=4 * GIB_KIB, target_kib=4 * GIB_KIB, workload=Idle(mib_to_kib(500))) for n in ("a", "b")
    ]
    return SimulatedHypervisor(guests, host_total_kib=64 * GIB_KIB)


def test_density_reclaims_idle_guests_production_keeps_them_while_the_host_has_plenty() -> None:
    density, production = _idle_host(), _idle_host()
    _run(Config(), density, 20)
    _run(parse('[host]\nprofile = "production"\n'), production, 20)
    print({n: g.target_kib // 1024 for n, g in density.guests.items()})
    assert all(g.target_kib <= 4 * GIB_KIB - mib_to_kib(500) for g in density.guests.values())
    assert all(g.target_kib == 4 * GIB_KIB for g in production.guests.values())


def test_production_reclaims_once_the_host_is_below_its_comfort_target() -> None:
    """20 % of 64 GiB is 12.8 GiB: with only 10 GiB available, idle guests give memory back again."""
    hv = _idle_host()
    hv.host_other_used_kib = 64 * GIB_KIB - 10 * GIB_KIB - 2 * mib_to_kib(500)
    _run(parse('[host]\nprofile = "production"\n'), hv, 20)
    assert all(g.target_kib < 4 * GIB_KIB for g in hv.guests.values())


def test_the_guard_scales_with_the_host() -> None:
    """A 512 GiB host with 9 GiB available: 2 % of it (10.2 GiB) is the guard, so a starving guest is not grown;
    with min_available_pct = 0 the 1024 MiB guard lets it grow."""

    def host() -> SimulatedHypervisor:
        hog = SimGuest(
            "hog",
            max_kib=8 * GIB_KIB,
            target_kib=GIB_KIB,
            workload=Hog(rate_kib_per_s=mib_to_kib(50), start_s=1_000_002.0),
        )
        return SimulatedHypervisor([hog], host_total_kib=512 * GIB_KIB, host_other_used_kib=503 * GIB_KIB)

    scaled, flat = host(), host()
    _run(Config(), scaled, 15)
    _run(parse("[host]\nmin_available_pct = 0\n"), flat, 15)
    print(scaled.guests["hog"].target_kib // 1024, flat.guests["hog"].target_kib // 1024)
    assert scaled.guests["hog"].target_kib <= GIB_KIB
    assert flat.guests["hog"].target_kib > GIB_KIB
