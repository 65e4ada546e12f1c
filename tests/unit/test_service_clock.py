"""The real Service driven by a fake monotonic clock on the simulated hypervisor: the untrusted-stats state
machine, the deadline reporting and dry run, each tick by tick."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from memcoord.core.config import parse
from memcoord.core.model import ApplyResult, Change, mib_to_kib
from memcoord.core.port import SKIPPED_DEADLINE
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import RELIEF_WARN_TICKS, TICK_BUDGET_S, Service
from memcoord.sim.host import Hog, Idle, SimGuest, SimulatedHypervisor

SIM_START_S = 1_000_000.0  # SimulatedHypervisor's default start


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now_s = 500.0

    def __call__(self) -> float:
        return self.now_s


def _service(tmp_path: Path, sim: object, clock: FakeClock, extra: str = "") -> Service:
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[status]\npath = "{tmp_path / "state.json"}"\n{extra}')
    return Service(cfg, parse(cfg.read_text()), lambda _uri: sim, observer=Observer(publish=False), clock=clock)


def _tick(service: Service, sim: SimulatedHypervisor, clock: FakeClock, dt_s: float = 1.0) -> None:
    assert service.tick()
    sim.advance(dt_s)
    clock.now_s += dt_s


def _messages(caplog: pytest.LogCaptureFixture, text: str, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage() and (level is None or r.levelno == level)]


def _host(*guests: SimGuest) -> SimulatedHypervisor:
    return SimulatedHypervisor(list(guests), host_total_kib=mib_to_kib(16384))


# -- the untrusted-stats state machine ------------------------------------------------------------------------


def test_a_guest_whose_stats_stop_is_left_alone_warned_once_and_welcomed_back_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    quiet = SimGuest("quiet", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(3072), workload=Idle(mib_to_kib(300)))
    sim, clock = _host(quiet), FakeClock()
    service = _service(tmp_path, sim, clock, "[guest]\nreclaim_step_mib = 100\n")
    stale_after_s = service.config.stale_after_s  # 3 stats periods + 2 ticks = 5 s
    caplog.set_level(logging.INFO, logger="memcoord")
    for _ in range(3):
        _tick(service, sim, clock)
    quiet.has_balloon_stats = False  # its stats stop refreshing
    warned_at_s = None
    target_at_warning_kib = 0
    for _ in range(30):
        _tick(service, sim, clock)
        if warned_at_s is None and _messages(caplog, "left alone until they flow", logging.WARNING):
            warned_at_s, target_at_warning_kib = clock.now_s, quiet.target_kib
            actions_at_warning = len(_messages(caplog, " quiet "))
    warnings = _messages(caplog, "left alone until they flow", logging.WARNING)
    assert warnings == [warnings[0]] and "quiet: stale balloon stats" in warnings[0], warnings
    assert warned_at_s is not None
    # Not the first tick it looked stale: only once it had been untrusted for stale_after_s on the clock.
    first_untrusted_s = service._untrusted_since["quiet"]
    assert warned_at_s - 1.0 - first_untrusted_s >= stale_after_s
    # Left alone: no action on it after the warning, its balloon target where it was.
    assert len(_messages(caplog, " quiet ")) == actions_at_warning
    assert quiet.target_kib == target_at_warning_kib
    quiet.has_balloon_stats = True
    for _ in range(5):
        _tick(service, sim, clock)
    assert _messages(caplog, "quiet: balloon stats flowing again") == ["quiet: balloon stats flowing again"]
    assert "quiet" not in service._untrusted_since


def test_a_guest_whose_stats_are_impossible_is_warned_about_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A guest claiming more free memory than its balloon holds is left alone like one without stats, and the
    warning says why its figures were refused."""
    liar = SimGuest("liar", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(1024), claimed_unused_kib=mib_to_kib(3000))
    sim, clock = _host(liar), FakeClock()
    service = _service(tmp_path, sim, clock)
    caplog.set_level(logging.INFO, logger="memcoord")
    for _ in range(int(service.config.stale_after_s) + 3):
        _tick(service, sim, clock)
    warnings = _messages(caplog, "left alone until they flow", logging.WARNING)
    expected = "liar: bad-stats balloon stats (impossible: unused (MemFree) 3000 MiB is more than"
    assert len(warnings) == 1 and expected in warnings[0], warnings


def test_the_warning_waits_on_the_services_clock_not_the_hosts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Simulated time runs on, the service's clock stands still: stats go stale, but no warning comes until
    the service's own clock has seen them untrusted for stale_after_s."""
    quiet = SimGuest("quiet", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(2048), has_balloon_stats=False)
    sim, clock = _host(quiet), FakeClock()
    service = _service(tmp_path, sim, clock)
    caplog.set_level(logging.INFO, logger="memcoord")
    for _ in range(20):
        _tick(service, sim, clock, dt_s=0.0)
        sim.advance(10.0)  # the host's time moves 200 s in all
    assert _messages(caplog, "left alone until they flow") == []
    clock.now_s += service.config.stale_after_s
    _tick(service, sim, clock)
    warnings = _messages(caplog, "left alone until they flow", logging.WARNING)
    assert warnings == ["quiet: no-stats balloon stats (no balloon driver or stats period): left alone until they flow"]


def test_a_guest_that_vanishes_is_forgotten_and_warned_about_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    quiet = SimGuest("quiet", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(2048), has_balloon_stats=False)
    other = SimGuest("other", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(2048))
    sim, clock = _host(quiet, other), FakeClock()
    service = _service(tmp_path, sim, clock)
    caplog.set_level(logging.INFO, logger="memcoord")
    for _ in range(10):
        _tick(service, sim, clock)
    assert len(_messages(caplog, "quiet: no-stats balloon stats")) == 1
    del sim.guests["quiet"]
    _tick(service, sim, clock)
    assert "quiet" not in service._untrusted_since and "quiet" not in service._untrusted
    # No "flowing again" for a guest that left: its stats did not come back.
    assert _messages(caplog, "flowing again") == []
    # The same name back later is a new guest: a new grace period, then one new warning.
    sim.guests["quiet"] = SimGuest(
        "quiet", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(2048), has_balloon_stats=False
    )
    _tick(service, sim, clock)
    assert len(_messages(caplog, "quiet: no-stats balloon stats")) == 1
    for _ in range(10):
        _tick(service, sim, clock)
    assert len(_messages(caplog, "quiet: no-stats balloon stats")) == 2


# -- the deadline --------------------------------------------------------------------------------------------


class SlowHost:
    """A simulated host whose setMemory calls each take `call_s` on the fake clock: once the deadline is spent
    the rest are skipped, as the libvirt adapter does."""

    def __init__(self, sim: SimulatedHypervisor, clock: FakeClock) -> None:
        self.sim, self.clock, self.call_s, self.skipped = sim, clock, 0.0, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.sim, name)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        results = []
        for change in changes:
            if deadline_s is not None and self.clock() >= deadline_s:
                results.append(ApplyResult(change, SKIPPED_DEADLINE))
                self.skipped += 1
                continue
            self.clock.now_s += self.call_s
            results.extend(self.sim.apply([change]))
        return results


def test_deadline_spent_is_reported_once_skipped_changes_are_not_recorded_and_the_recovery_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hungry = [
        SimGuest(
            f"hog{i}",
            max_kib=mib_to_kib(8192),
            target_kib=mib_to_kib(1024),
            workload=Hog(mib_to_kib(200), start_s=SIM_START_S),
        )
        for i in range(3)
    ]
    sim, clock = _host(*hungry), FakeClock()
    slow = SlowHost(sim, clock)
    service = _service(tmp_path, slow, clock)
    caplog.set_level(logging.INFO, logger="memcoord")
    for _ in range(6):  # stats flow, the hogs grow into starving
        _tick(service, sim, clock)
    slow.call_s = TICK_BUDGET_S  # the first setMemory of a tick spends the whole deadline
    for _ in range(8):
        attempted_before = sim.set_memory_calls
        _tick(service, sim, clock)
        done = sim.set_memory_calls - attempted_before
        grown = {n for n, p in service.state.pending.items() if n.startswith("hog")}
        assert done <= 1  # never more than the one call that spent the deadline
        # What was skipped is not pending: only a domain whose setMemory was really made can be.
        assert all(sim.guests[n].target_kib == service.state.pending[n].target_kib for n in grown)
    assert slow.skipped > 0  # the deadline did cut ticks short
    assert _messages(caplog, "setMemory failed") == []  # a skipped change is not a failed one
    warnings = _messages(caplog, "its deadline is", logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "were skipped" in warnings[0]
    slow.call_s = 0.0
    for _ in range(3):
        _tick(service, sim, clock)
    assert len(_messages(caplog, "fit their")) == 1
    assert len(_messages(caplog, "its deadline is", logging.WARNING)) == 1


# -- relief ----------------------------------------------------------------------------------------------------


def test_relief_shortfall_is_warned_after_its_ticks_once_and_the_recovery_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Counted in ticks, whatever the clock does: the warning comes on the RELIEF_WARN_TICKS-th short tick."""
    guests = [
        SimGuest(f"g{i}", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(2048), workload=Idle(mib_to_kib(300)))
        for i in range(2)
    ]
    sim = SimulatedHypervisor(guests, host_total_kib=mib_to_kib(8192), host_other_used_kib=mib_to_kib(5000))
    for g in sim.guests.values():
        g.rss_kib = g.current_kib
    clock = FakeClock()
    service = _service(tmp_path, sim, clock, "[host]\nmin_available_mib = 4000\n")
    caplog.set_level(logging.INFO, logger="memcoord")
    short_ticks = 0
    for _ in range(12):
        _tick(service, sim, clock, dt_s=1.0)
        clock.now_s += 100.0  # a clock far ahead of the ticks changes nothing here
        short_ticks = short_ticks + 1 if service._short_ticks else 0
        warned = _messages(caplog, "guests hold only part", logging.WARNING)
        assert len(warned) == (1 if short_ticks >= RELIEF_WARN_TICKS else 0), (short_ticks, warned)
    sim.host_other_used_kib = 0
    for _ in range(3):
        _tick(service, sim, clock)
    assert _messages(caplog, "host back above its guard") == ["host back above its guard"]
    assert len(_messages(caplog, "guests hold only part")) == 1


def test_episodes_start_once_end_once_and_forget_quietly() -> None:
    from memcoord.daemon.service import Episodes

    troubles = Episodes()
    assert [troubles.start(), troubles.start(), troubles.end(), troubles.end()] == [True, False, True, False]
    assert troubles.start("web1") and not troubles.start("web1") and troubles.start("db1")
    assert "web1" in troubles and None not in troubles
    troubles.forget("web1")
    assert "web1" not in troubles and not troubles.end("web1") and troubles.end("db1")
