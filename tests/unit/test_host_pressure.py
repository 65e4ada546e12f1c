"""The host's PSI memory pressure as the libvirt adapter reads it (/proc/pressure/memory; psutil has none)."""

from __future__ import annotations

from pathlib import Path

from memcoord.hypervisor.libvirt import PSI_MEMORY_PATH, memory_pressure_some_avg10


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
