"""scripts/preflight.py, run for real: it passes on this machine (root, libvirtd, QEMU, nspawn) and names the missing
part in one line when one is missing (QEMU off PATH, or not root)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

PREFLIGHT = Path(__file__).resolve().parents[2] / "scripts" / "preflight.py"
PYTHON = "/usr/bin/python3"  # Debian's: python3-libvirt lives there


def _preflight(env: dict[str, str] | None = None, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [*(prefix or []), PYTHON, str(PREFLIGHT)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_this_machine_passes():
    r = _preflight()
    assert r.returncode == 0, r.stderr
    checked = [line.split(":")[1].split()[-1] for line in r.stdout.splitlines()]
    assert checked == ["root", "libvirtd", "qemu", "systemd-nspawn", "modules", "tools"], r.stdout


def _tools() -> list[str]:
    """The programs the preflight checks besides QEMU, from the script itself."""
    spec = importlib.util.spec_from_file_location("preflight", PREFLIGHT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return ["systemd-nspawn", *module.TOOLS]


def test_qemu_missing_is_one_clear_line(tmp_path: Path):
    """A PATH with every tool the preflight checks but QEMU."""
    for tool in _tools():
        found = shutil.which(tool)
        assert found, f"{tool} missing on this machine: make deps"
        (tmp_path / tool).symlink_to(found)
    r = _preflight(env={**os.environ, "PATH": str(tmp_path)})
    assert r.returncode == 1
    fails = [line for line in r.stderr.splitlines() if "FAIL" in line]
    assert fails == ["preflight: FAIL qemu: qemu-system-x86_64 not found"], r.stderr


def test_not_root_stops_at_the_first_line():
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) missing"
    r = _preflight(prefix=[setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert r.returncode == 1
    assert r.stderr.splitlines()[0].startswith("preflight: FAIL root: runs as uid 65534, needs root"), r.stderr
    assert r.stdout == ""
