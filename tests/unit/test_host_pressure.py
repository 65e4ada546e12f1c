"""The host's PSI memory pressure as the libvirt adapter reads it (/proc/pressure/memory; psutil has none), and
the policy's answer to it (host.pressure_relief_pct)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from memcoord.core.config import parse
from memcoord.core.model import Action, Change, Plan, Rule, Snapshot
from memcoord.core.policy import lookahead_s
from memcoord.hypervisor.libvirt import PSI_MEMORY_PATH, memory_pressure_some_avg10
from tests.helpers.snapshots import NOW_S, by_name, dom, snap, two_ticks
from tests.helpers.snapshots import bump as _bump


def test_some_avg10_is_read_from_the_kernels_lines(tmp_path: Path) -> None:
    psi = tmp_path / "memory"
    psi.write_text(
        "some avg10=12.34 avg60=3.00 avg300=0.50 total=123456\nfull avg10=7.00 avg60=1.00 avg300=0.10 total=6543\n"
    )
    assert memory_pressure_some_avg10(psi) == 12.34


def test_no_psi_is_none(tmp_path: Path) -> None:
    assert memory_pressure_some_avg10(tmp_path / "missing") is None
    odd = tmp_path / "odd"
    odd.write_text("some avg60=1.00\n")
    assert memory_pressure_some_avg10(odd) is None
    odd.write_text("some avg10=lots\n")
    assert memory_pressure_some_avg10(odd) is None


def test_this_kernels_file_reads_as_a_percentage() -> None:
    if not PSI_MEMORY_PATH.exists():
        assert memory_pressure_some_avg10() is None
        return
    value = memory_pressure_some_avg10()
    assert value is not None and 0.0 <= value <= 100.0


def _at_psi(s: Snapshot, pct: float | None) -> Snapshot:
    """The snapshot with the host's PSI memory pressure at pct."""
    return dataclasses.replace(s, host=dataclasses.replace(s.host, pressure_some_avg10=pct))


def _pressured(pct: float | None, line_pct: float) -> tuple[Plan, dict[str, Change]]:
    """Two steady cache-holding guests on a host far above its guard, its PSI at pct, the line at line_pct."""
    config = parse(f"[host]\npressure_relief_pct = {line_pct}\n")
    doms = [dom("cache", 2048, 16, usable_mib=1500), dom("lean", 1024, 300)]
    first, second = snap(*doms), snap(*(_bump(d) for d in doms), now_s=NOW_S + 1)
    plan = two_ticks(_at_psi(first, pct), _at_psi(second, pct), config)
    return plan, by_name(plan)


def test_host_pressure_above_the_line_relieves_with_the_reason_and_nobody_grows() -> None:
    plan, changes = _pressured(25.0, 10.0)
    assert [c.action for c in changes.values()] == [Action.RELIEVE]
    relieved = changes["cache"]
    assert relieved.why is not None and relieved.why.rule is Rule.RELIEF
    assert relieved.reason.startswith("host under memory pressure (host budget "), relieved.reason
    assert relieved.to_kib >= plan.bands["cache"].low_kib
    assert any("under memory pressure" in note for note in plan.notes)


def test_no_relief_below_the_line_with_the_line_off_or_without_psi() -> None:
    for pct, line_pct in ((5.0, 10.0), (80.0, 0.0), (None, 10.0)):
        _plan, changes = _pressured(pct, line_pct)
        assert not any(c.action is Action.RELIEVE for c in changes.values()), (pct, line_pct, changes)


def test_under_pressure_a_guest_short_of_lasting_is_lent_from_the_hosts_room() -> None:
    """Pressure stops growth, not loans. PSI can be high with GiBs above the guard (the host's own I/O refaulting,
    a cgroup at its limit): a guest ramping 60 MiB/s toward its OOM was left to it ("nobody grows") with the host
    8 GiB above its guard. It is lent what it lacks to last until memcoord can act again, from the host's room."""
    config = parse("[host]\npressure_relief_pct = 10\n")
    first = snap(dom("ramp", 1024, 100, max_mib=4096))
    second = snap(dom("ramp", 1024, 40, max_mib=4096, last_s=NOW_S + 1), now_s=NOW_S + 1)
    plan = two_ticks(_at_psi(first, 25.0), _at_psi(second, 25.0), config)
    lent = by_name(plan)["ramp"]
    lacks_mib = 60 * lookahead_s(config) - 40  # what its ramp uses until memcoord can act again, less its free
    assert lent.why is not None and lent.why.rule is Rule.LENT, lent
    assert lent.delta_kib >= lacks_mib * 1024, lent
    assert any("under memory pressure" in note for note in plan.notes)
