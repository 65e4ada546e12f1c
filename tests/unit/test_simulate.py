"""Scenario files and `memcoord simulate`: clear errors, deterministic runs, and the numbers an admin reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from memcoord.config import Config
from memcoord.simulate import ScenarioError, load_scenario, parse_scenario, run

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))

MINIMAL = """
name = "t"
duration_s = 30
[host]
total_mib = 4096
[[guests]]
name = "a"
max_mib = 2048
start_mib = 512
"""


def test_every_shipped_scenario_loads() -> None:
    assert len(SCENARIOS) >= 6
    for path in SCENARIOS:
        assert load_scenario(path).guests


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "colour = 'red'\n", "s.toml: guests.0.colour = 'red': unknown key"),
        (MINIMAL.replace('name = "t"\n', ""), "s.toml: name: required key is missing"),
        (MINIMAL.replace("start_mib = 512", "start_mib = 4096"), "start_mib (4096) is above max_mib (2048)"),
        (MINIMAL + "workload = { kind = 'grow' }\n", "s.toml: guests.0.workload.grow.rate_mib_s: required key"),
        (MINIMAL + "workload = { kind = 'jump' }\n", "s.toml: guests.0.workload = "),
        (MINIMAL.replace("total_mib = 4096", "total_mib = -1"), "s.toml: host.total_mib = -1: "),
        (MINIMAL + '[[guests]]\nname = "a"\nmax_mib = 1\nstart_mib = 1\n', "repeated: a"),
        ("name = ", "s.toml: not valid TOML"),
    ],
)
def test_scenario_errors_name_file_key_and_value(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, "s.toml")
    assert expected in str(err.value)


def test_missing_trace_file_is_reported_before_the_run(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(MINIMAL + "workload = { kind = 'trace', file = 'nope.csv' }\n")
    with pytest.raises(ScenarioError, match=r"s\.toml: guests\.0\.workload\.file: .*nope\.csv: cannot read"):
        load_scenario(path)


def test_a_run_is_deterministic_for_a_seed() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "fleet-50.toml")
    first = run(scenario, Config(), "memcoord", duration_s=60)
    second = run(scenario, Config(), "memcoord", duration_s=60)
    assert first == second
    reseeded = run(scenario.model_copy(update={"seed": 51}), Config(), "memcoord", duration_s=60)
    assert [g.peak_used_mib for g in reseeded.guests] != [g.peak_used_mib for g in first.guests]


@pytest.mark.parametrize("policy", ["memcoord", "mom", "proxmox"])
def test_host_never_goes_negative_and_changes_are_counted(policy: str) -> None:
    report = run(load_scenario(ROOT / "scenarios" / "course-2-four-hogs.toml"), Config(), policy)
    assert report.host_min_available_mib >= 0
    assert report.balloon_changes > 0


def test_memcoord_keeps_the_host_floor_with_four_hogs() -> None:
    report = run(load_scenario(ROOT / "scenarios" / "course-2-four-hogs.toml"), Config(), "memcoord")
    assert report.host_min_available_mib >= Config().host.min_available_mib


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
        assert int(_row(out, idle)[4]) < 512, out  # idle guests gave memory back
    host_min = re.search(r"minimum available (\d+) MiB", out)
    assert host_min and int(host_min.group(1)) >= 1024, out


def test_memcoord_simulate_rejects_a_bad_scenario_with_exit_65(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL + "colour = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "memcoord.cli", "simulate", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 65
    assert f"{path}: guests.0.colour = 1: unknown key" in proc.stderr


def test_memcoord_simulate_policy_and_duration_flags() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "memcoord.cli",
            "simulate",
            str(ROOT / "scenarios" / "course-3-grow-free.toml"),
            "--policy",
            "proxmox",
            "--duration",
            "20",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert "policy proxmox, 20 s simulated" in proc.stdout
