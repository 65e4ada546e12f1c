"""Dry run keeps its own targets: successive ticks show the path a guest would take, nothing is applied, and
each decision is logged once."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest

from memcoord.core.config import parse
from memcoord.core.model import Action, Change, DomainStats, mib_to_kib
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import Service
from memcoord.hypervisor.dry_run import DryRunHypervisor, overlay, released_kib
from memcoord.sim.host import Idle, SimGuest, SimulatedHypervisor


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def _wasteful_host() -> tuple[SimulatedHypervisor, SimGuest]:
    fat = SimGuest("fat", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(4096), workload=Idle(mib_to_kib(300)))
    return SimulatedHypervisor([fat], host_total_kib=mib_to_kib(16384)), fat


def _service(tmp_path: Path, sim: SimulatedHypervisor, clock: FakeClock, dry_run: bool = True) -> Service:
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(
        f"[loop]\ndry_run = {str(dry_run).lower()}\n[guest]\nreclaim_step_mib = 100\n"
        f'[status]\npath = "{tmp_path / "state.json"}"\n'
    )
    return Service(cfg, parse(cfg.read_text()), lambda _uri: sim, observer=Observer(publish=False), clock=clock)


def _run(service: Service, sim: SimulatedHypervisor, clock: FakeClock, ticks: int) -> list[int]:
    """The would-be target of "fat" after each tick (its real size while dry run has none)."""
    path = []
    for _ in range(ticks):
        assert service.tick()
        sim.advance(1.0)
        clock.now_s += 1.0
        view = service._dry_run_view
        wb = view.would_be.get("fat") if view is not None else None
        path.append(wb.target_kib if wb else sim.guests["fat"].target_kib)
    return path


def _dry_run_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("dry run, not applied")]


def test_a_wasteful_guests_would_be_target_goes_down_step_by_step_and_nothing_is_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim, fat = _wasteful_host()
    clock = FakeClock()
    service = _service(tmp_path, sim, clock)
    caplog.set_level(logging.INFO, logger="memcoord")
    path = _run(service, sim, clock, 120)
    moves = [b for a, b in zip([mib_to_kib(4096), *path], path, strict=False) if b != a]
    print("dry-run path, MiB:", [m // 1024 for m in moves])
    # It went down more than one step, each step lower than the last: the path, not the first step forever.
    assert len(moves) >= 5, moves
    assert all(b < a for a, b in itertools.pairwise(moves)), moves
    assert all(a - b <= mib_to_kib(100) for a, b in zip([mib_to_kib(4096), *moves], moves, strict=False))
    # ... and settled: the last ticks decided nothing new.
    assert path[-10:] == [path[-1]] * 10
    # Where it settles is where the real loop takes the same guest.
    real_sim, real_fat = _wasteful_host()
    (tmp_path / "real").mkdir()
    real_clock = FakeClock()
    _run(_service(tmp_path / "real", real_sim, real_clock, dry_run=False), real_sim, real_clock, 120)
    assert path[-1] == real_fat.target_kib, (path[-1] // 1024, real_fat.target_kib // 1024)
    # Nothing was applied to the hypervisor.
    assert sim.set_memory_calls == 0 and fat.target_kib == fat.current_kib == mib_to_kib(4096)
    # One journal line per step of the path, none repeated.
    lines = _dry_run_lines(caplog)
    assert len(lines) == len(moves) and len(set(lines)) == len(lines), lines


def test_a_repeated_identical_decision_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """When dry run has to decide from the real size again (its view lost, as when the balloon is moved under it
    and back), the same first step is decided again: it is not logged again."""
    sim, _fat = _wasteful_host()
    clock = FakeClock()
    service = _service(tmp_path, sim, clock)
    caplog.set_level(logging.INFO, logger="memcoord")
    for _ in range(5):
        _run(service, sim, clock, 1)
        assert service._dry_run_view is not None
        service._dry_run_view.would_be.clear()
    lines = _dry_run_lines(caplog)
    assert len(lines) == 1 and "reclaim fat 4096 -> 3996 MiB" in lines[0], lines


def test_the_view_is_dropped_when_the_real_balloon_moves_or_the_guest_goes() -> None:
    sim, fat = _wasteful_host()
    fat.rss_kib = fat.current_kib  # it touched all its memory once
    view = DryRunHypervisor(sim)
    sim.advance(1.0)
    snap = view.sample()
    view.apply([Change("fat", Action.RECLAIM, fat.current_kib, mib_to_kib(3996), "test")])
    shown = {d.name: d for d in view.sample().domains}["fat"]
    assert shown.current_kib == mib_to_kib(3996)
    assert view.sample().host.available_kib > snap.host.available_kib  # the lowering would give memory back
    fat.target_kib = fat.current_kib = mib_to_kib(2048)  # someone else resized it
    assert {d.name: d for d in view.sample().domains}["fat"].current_kib == mib_to_kib(2048)
    assert view.would_be == {}
    view.apply([Change("fat", Action.RECLAIM, fat.current_kib, mib_to_kib(1948), "test")])
    del sim.guests["fat"]
    view.sample()
    assert view.would_be == {}


def test_overlay_moves_the_guests_free_figures_with_its_balloon() -> None:
    dom = DomainStats(
        "g", current_kib=4000, max_kib=8000, unused_kib=1500, usable_kib=2500, available_kib=3900, rss_kib=3000
    )
    shown = overlay(dom, 3000)
    assert (shown.current_kib, shown.unused_kib, shown.usable_kib, shown.available_kib) == (3000, 500, 1500, 2900)
    assert overlay(dom, 1000).unused_kib == 0  # never below nothing
    assert released_kib(dom, 2500) == 500  # only what QEMU holds above the target comes back to the host
    assert released_kib(dom, 5000) == 0


def test_leaving_dry_run_on_reload_starts_from_the_real_sizes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The targets dry run kept were never set: out of dry run, the first real step is from the real balloon."""
    sim, _fat = _wasteful_host()
    clock = FakeClock()
    service = _service(tmp_path, sim, clock)
    _run(service, sim, clock, 10)
    assert service._dry_run_view is not None and service._dry_run_view.would_be["fat"].target_kib < mib_to_kib(3800)
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(cfg.read_text().replace("dry_run = true", "dry_run = false"))
    service.reload()
    assert not service.config.loop.dry_run and service._dry_run_view is None
    caplog.set_level(logging.INFO, logger="memcoord")
    _run(service, sim, clock, 5)
    assert sim.set_memory_calls >= 1
    first = next(r.getMessage() for r in caplog.records if r.getMessage().startswith(("reclaim fat", "dry run")))
    assert first.startswith("reclaim fat 4096 -> 3996 MiB"), first


def test_status_and_metrics_show_the_real_sizes_in_dry_run(tmp_path: Path) -> None:
    sim, _fat = _wasteful_host()
    clock = FakeClock()
    service = _service(tmp_path, sim, clock)
    _run(service, sim, clock, 10)
    assert service._dry_run_view is not None and service._dry_run_view.would_be["fat"].target_kib < mib_to_kib(3800)
    (shown,) = [d for d in service.observer.view["domains"] if d["name"] == "fat"]
    assert shown["current_kib"] == mib_to_kib(4096), shown
