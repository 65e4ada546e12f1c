"""`memcoord simulate` as the real CLI, and what the product's processes import."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.repo import REPO as ROOT


def _row(output: str, guest: str) -> list[str]:
    for line in output.splitlines():
        if line.split() and line.split()[0] == guest:
            return line.split()
    raise AssertionError(f"no row for {guest} in:\n{output}")


def test_memcoord_simulate_end_to_end_on_the_one_hog_scenario() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "memcoord.cli", "simulate", str(ROOT / "scenarios" / "course-1-one-hog.toml")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    # guest, max, peak used, peak size, final size, OOM kills, starving s, mean unused, changes, max relief
    hog = _row(out, "vm1")
    assert int(hog[3]) >= 1900, out  # grown close to its 2048 MiB max
    assert int(hog[5]) == 0, out  # and never OOM-killed
    assert float(hog[6]) < 15, out
    for idle in ("vm-1", "vm-2", "vm-3"):
        # Idle guests hold no more than their wasteful line (350 MiB) plus less than a move's worth (32 MiB).
        assert int(_row(out, idle)[4]) <= 512 and float(_row(out, idle)[7]) < 350 + 32, out
    host_min = re.search(r"minimum available (\d+) MiB", out)
    assert host_min and int(host_min.group(1)) >= 1024, out


def test_memcoord_simulate_rejects_a_bad_scenario_with_exit_65(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'name = "t"\nduration_s = 30\n[host]\ntotal_mib = 4096\n[[guests]]\nname = "a"\nmax_mib = 2048\n'
        "start_mib = 512\ncolour = 1\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "memcoord.cli", "simulate", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == os.EX_DATAERR
    assert f"{path}: guests.0.colour = 1: unknown key" in proc.stderr


def test_memcoord_simulate_duration_flag_runs_memcoords_own_policy() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "memcoord.cli",
            "simulate",
            str(ROOT / "scenarios" / "course-3-grow-free.toml"),
            "--duration",
            "20",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert "policy memcoord, 20 s simulated" in proc.stdout


def test_the_product_imports_no_bench_material() -> None:
    """`memcoord run` and `memcoord simulate` load none of the peers' ports (bench/policies)."""
    code = (
        "import sys, memcoord.cli, memcoord.daemon.service, memcoord.admin.simulate, memcoord.daemon.observe;"
        "memcoord.cli.build_parser();"
        "print(sorted(m for m in sys.modules if m.startswith('bench') or m.endswith(('.mom', '.proxmox'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert proc.stdout.strip() == "[]", proc.stdout
