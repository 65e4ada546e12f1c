"""The config checked by the real CLI: check-config, and memcoord run refusing an invalid file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import memcoord
from tests.helpers.repo import REPO

SHIPPED = REPO / "etc" / "memcoord.toml"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memcoord.cli", *args], capture_output=True, text=True, timeout=60)


def test_check_config_ok_exits_0():
    result = run_cli("check-config", str(SHIPPED))
    assert result.returncode == 0
    assert result.stdout.strip() == f"{SHIPPED}: OK"


def test_check_config_bad_exits_78_with_every_error(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[guest]\nmin_mib = 0\nreclaim_step_mib = 0\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == os.EX_CONFIG
    assert f"{bad}: guest.reclaim_step_mib = 0" in result.stderr
    assert f"{bad}: guest.min_mib = 0" in result.stderr
    bad.write_text("[guest]\nstarving_mib = 500\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == os.EX_CONFIG
    assert f"{bad}: guest.starving_mib = 500: must be less than guest.wasteful_mib (350)" in result.stderr


def test_run_with_invalid_config_exits_78(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[loop]\ninterval = 1\n")
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == os.EX_CONFIG
    assert f"{bad}: loop.interval = 1: unknown key" in result.stderr


def test_check_config_warns_about_unmatched_tables_and_stays_valid(tmp_path: Path):
    path = tmp_path / "memcoord.toml"
    path.write_text(
        '[libvirt]\nuri = "sim:///demo"\n[domains."sim-hgo"]\nenabled = false\n[domains."sim-idle"]\nmin_mib = 512\n'
    )
    proc = memcoord("check-config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{path}: OK\n"
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"{path}: warning: ") and '[domains."sim-hgo"]' in line and "'sim-hog'" in line
    offline = memcoord("check-config", "--offline", str(path))
    assert (offline.returncode, offline.stderr) == (0, "")


def test_check_config_without_libvirt_validates_the_file_and_says_names_were_not_checked(tmp_path: Path):
    path = tmp_path / "memcoord.toml"
    socket = tmp_path / "no-libvirtd.sock"
    path.write_text(f'[libvirt]\nuri = "qemu+unix:///system?socket={socket}"\n[domains."web1"]\nenabled = false\n')
    proc = memcoord("check-config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{path}: OK\n"
    assert "names not checked against libvirt" in proc.stderr and str(socket) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[domains."web1"]\nmin_mib = "lots"\n')
    assert memcoord("check-config", str(bad)).returncode == 78
