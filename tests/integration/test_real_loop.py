"""The proof the loop works: real libvirtd, two real tiny guests, `memcoord run` as a subprocess.

A guest whose hog eats its free memory is grown, an idle guest with lots unused is reclaimed, gradually and
never below its floor; both read back through libvirt, not from memcoord's own log.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from pathlib import Path

import libvirt
import pytest

from lab.coordinator import Memcoord, lab_config
from lab.lab import Lab
from lab.libvirtd import ensure_libvirtd
from memcoord.core.model import Action, Rule, mib_to_kib
from memcoord.hypervisor.libvirt import CALL_TIMEOUT_S

pytestmark = pytest.mark.real


def current_mib(lab: Lab) -> dict[str, float]:
    return {name: stats["balloon.current"] / 1024 for name, stats in lab.balloon_stats().items()}


def wait_until(predicate, timeout_s: float, every_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def test_starving_guest_grows_and_idle_guest_is_reclaimed(tmp_path: Path):
    ensure_libvirtd()
    with Lab(prefix="mccore-", n=2, max_mib=2048, current_mib=512, run_dir=tmp_path / "lab") as lab:
        hungry, idle = lab.names
        # Give the idle guest far more than it uses, and wait until its balloon has moved there.
        lab.guest(2).domain.setMemoryFlags(mib_to_kib(1280), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert wait_until(lambda: current_mib(lab)[idle] >= 1270, 60), current_mib(lab)
        start = current_mib(lab)

        with Memcoord(lab_config(lab.domain_glob), tmp_path) as coordinator:
            lab.start_hog(1, "grow", page_us=200)  # about 20 MiB/s
            history: list[dict[str, float]] = []

            def done() -> bool:
                history.append(current_mib(lab))
                grows_for_need = [
                    a for a in coordinator.actions if a.domain == hungry and a.rule in (Rule.NEED, Rule.LENT)
                ]
                return bool(grows_for_need) and history[-1][hungry] >= 1400 and history[-1][idle] <= start[idle] - 300

            reached = wait_until(done, 180)
            log = coordinator.log_text()
            assert coordinator.alive(), log
        assert coordinator.proc is not None and coordinator.proc.returncode == 0, log
        assert reached, f"start {start}, end {history[-1]}\n{log}"

        # Read back through libvirt: the hungry guest's balloon gets to what memcoord recorded last.
        grown = [a for a in coordinator.actions if a.domain == hungry]
        assert all(a.action == Action.GROW for a in grown), grown
        assert wait_until(lambda: abs(current_mib(lab)[hungry] - grown[-1].to_mib) <= 4, 15), (
            current_mib(lab),
            grown[-1],
        )
        # Gradual: one reclaim step (plus the tax) per tick at most, never below the floor.
        taken = [a for a in coordinator.actions if a.domain == idle]
        first = taken[0] if taken else None
        assert first is not None and (first.action, first.from_mib, first.to_mib) == (Action.RECLAIM, 1280, 1180), (
            taken[:3]
        )
        assert first.rule is Rule.RECLAIM, first  # idle reclaim, not relief nor the tax
        assert not coordinator.timeline_errors, coordinator.timeline_errors
        assert taken and all(a.from_mib - a.to_mib <= 100 + 2 for a in taken), taken
        gaps_s = [b.t_mono_s - a.t_mono_s for a, b in itertools.pairwise(taken)]
        assert all(gap_s > 0.5 for gap_s in gaps_s), gaps_s
        assert min(h[idle] for h in history) >= 256
        assert "Out of memory" not in lab.run(2, "dmesg")[1]


DRY_RUN_RE = re.compile(r"dry run, not applied: (\w+) (\S+) (\d+) -> (\d+) MiB")


def test_dry_run_shows_the_path_a_guest_would_take_and_changes_nothing(tmp_path: Path):
    """Dry run on a real guest with far more than it uses: the journal shows its would-be target going down
    step by step (each step from where the last one left it, each logged once) while libvirt shows its balloon
    where it was."""
    ensure_libvirtd()
    with Lab(prefix="mcdry-", n=1, max_mib=2048, current_mib=512, run_dir=tmp_path / "lab") as lab:
        (idle,) = lab.names
        lab.guest(1).domain.setMemoryFlags(mib_to_kib(1280), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert wait_until(lambda: current_mib(lab)[idle] >= 1270, 60), current_mib(lab)
        start_mib = current_mib(lab)[idle]
        sizes: list[float] = []

        def steps() -> list[tuple[int, int]]:
            return [(int(m[2]), int(m[3])) for m in DRY_RUN_RE.findall(coordinator.log_text()) if m[1] == idle]

        with Memcoord(lab_config(lab.domain_glob, {"loop": {"dry_run": True}}), tmp_path) as coordinator:
            reached = wait_until(lambda: sizes.append(current_mib(lab)[idle]) or len(steps()) >= 4, 120)
            log = coordinator.log_text()
            assert coordinator.alive(), log
        assert reached, log
        path = steps()
        print("dry-run path of", idle, "MiB:", path)
        assert abs(path[0][0] - start_mib) <= 4, (start_mib, path)
        # A path, not the first step again: each step starts where the previous one would have left the guest.
        assert all(b[0] == a[1] and b[1] < a[1] for a, b in itertools.pairwise(path)), path
        assert len(set(path)) == len(path), path
        # Nothing applied: the balloon stayed where it was all along, and memcoord logged no real action.
        assert all(abs(size - start_mib) <= 4 for size in sizes), sizes
        assert not [a for a in coordinator.actions if a.domain == idle], coordinator.actions


def test_a_guest_whose_qemu_hangs_does_not_stall_the_others(tmp_path: Path):
    """One QEMU stopped dead (SIGSTOP): its monitor never answers. memcoord must go on coordinating the rest,
    quickly, and leave the hung guest alone."""
    ensure_libvirtd()
    with Lab(prefix="mchang-", n=2, max_mib=2048, current_mib=512, run_dir=tmp_path / "lab") as lab:
        hung, idle = lab.names
        lab.guest(2).domain.setMemoryFlags(mib_to_kib(1280), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert wait_until(lambda: current_mib(lab)[idle] >= 1270, 60), current_mib(lab)
        qemu_pid = int(Path(f"/run/libvirt/qemu/{hung}.pid").read_text())
        os.kill(qemu_pid, signal.SIGSTOP)
        try:
            with Memcoord(lab_config(lab.domain_glob), tmp_path) as coordinator:
                started_s = time.monotonic()
                reclaimed = wait_until(lambda: len([a for a in coordinator.actions if a.domain == idle]) >= 3, 60)
                elapsed_s = time.monotonic() - started_s
                log = coordinator.log_text()
                assert coordinator.alive(), log
        finally:
            os.kill(qemu_pid, signal.SIGCONT)
        assert reclaimed, log
        assert not [a for a in coordinator.actions if a.domain == hung], log
        # The hung guest costs at most one unanswered stats call and one unanswered stats-period call, once.
        assert log.count("no answer from") <= 2, log
        assert elapsed_s < 2 * CALL_TIMEOUT_S + 15, log
        print(f"3 reclaims of the healthy guest in {elapsed_s:.1f} s beside a hung QEMU")
