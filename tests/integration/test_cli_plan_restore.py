"""`memcoord plan` and `memcoord restore` as the real console script: bad input gets one clear message and its
exit code, and nothing is changed.

The positive paths run on the simulated hypervisor (`sim:`, the built-in three-guest host); the real-guest
behaviour is in tests/e2e/test_plan_restore_real.py. A libvirt nobody listens on is a unix socket path that
does not exist. The state file of a "running daemon" is written with state.publish and this test's own pid.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from memcoord.core.config import Config
from memcoord.daemon import state
from tests.helpers.cli import EX_CONFIG, EX_NOINPUT, EX_USAGE, assert_clean_failure, memcoord

EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM = 69, 75, 77
DEAD_URI = "qemu+unix:///system?socket=/nonexistent/memcoord-test/libvirt-sock"


def write_config(tmp_path: Path, uri: str = "sim:", extra: str = "") -> Path:
    path = tmp_path / "memcoord.toml"
    path.write_text(f'[libvirt]\nuri = "{uri}"\n[status]\npath = "{tmp_path / "state.json"}"\n{extra}')
    return path


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("plan", "--bogus"), "unrecognized arguments: --bogus"),
        (("plan", "web1"), "unrecognized arguments: web1"),
        (("plan", "--config"), "expected one argument"),
        (("restore", "--to", "0"), "argument --to: must be greater than 0 MiB: '0'"),
        (("restore", "--to", "-512"), "argument --to: must be greater than 0 MiB: '-512'"),
        (("restore", "--to", "1.5"), "argument --to: not a whole number of MiB: '1.5'"),
        (("restore", "--to", "2G"), "argument --to: not a whole number of MiB: '2G'"),
        (("restore", "--to"), "argument --to: expected one argument"),
        (("restore", "--bogus"), "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_64(args: tuple[str, ...], needle: str) -> None:
    assert_clean_failure(memcoord(*args), EX_USAGE, "usage: memcoord", needle)


@pytest.mark.parametrize("command", ["plan", "restore"])
def test_config_missing_or_invalid(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert_clean_failure(memcoord(command, "--config", str(missing)), EX_NOINPUT, f"{missing}: no such file")
    bad = tmp_path / "bad.toml"
    bad.write_text("[host]\nmin_available_mib = -1\n")
    assert_clean_failure(memcoord(command, "--config", str(bad)), EX_CONFIG, f"{bad}: host.min_available_mib = -1")


@pytest.mark.parametrize("args", [("plan",), ("plan", "--json"), ("restore",), ("restore", "web1", "--to", "1024")])
def test_libvirt_unreachable_exits_69_in_one_line_naming_the_uri(args: tuple[str, ...], tmp_path: Path) -> None:
    proc = memcoord(*args, "--config", str(write_config(tmp_path, DEAD_URI)))
    assert_clean_failure(proc, EX_UNAVAILABLE, DEAD_URI)
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(
    ("uri", "names", "needles"),
    [
        ("sim:", ("nosuch",), ("'nosuch'", "running with a balloon: sim-busy, sim-hog, sim-idle")),
        ("sim:", ("sim-hog", "typo1", "typo2"), ("'typo1'", "'typo2'")),
        # The test driver's one domain has no balloon stats: named, not restored.
        (
            "test:///default",
            ("test",),
            ("no running domain with a balloon named 'test'", "running with a balloon: none"),
        ),
    ],
)
def test_unknown_domain_is_named_and_nothing_changes(
    uri: str, names: tuple[str, ...], needles: tuple[str, ...], tmp_path: Path
) -> None:
    proc = memcoord("restore", *names, "--config", str(write_config(tmp_path, uri)))
    assert_clean_failure(proc, EX_NOINPUT, *needles)


def test_restore_on_the_simulator_reports_each_guest(tmp_path: Path) -> None:
    proc = memcoord("restore", "sim-idle", "sim-hog", "--config", str(write_config(tmp_path)))
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "served in this order: sim-idle, sim-hog" in lines[0]
    assert lines[1:] == ["sim-idle: 1024 MiB -> 2048 MiB", "sim-hog: 512 MiB -> 2048 MiB"]
    # The action records (stderr: no journal here), one per guest, with the restore kind.
    assert "restore sim-idle 1024 -> 2048 MiB (memcoord restore to its maximum)" in proc.stderr


def test_restore_clamps_to_and_dry_run_says_so(tmp_path: Path) -> None:
    proc = memcoord("restore", "sim-hog", "--to", "4096", "--dry-run", "--config", str(write_config(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == (
        "sim-hog: 512 MiB -> 2048 MiB (dry run, not applied); "
        "--to 4096 MiB is above its maximum 2048 MiB: restoring to 2048 MiB"
    )
    assert "dry run, not applied: restore sim-hog 512 -> 2048 MiB" in proc.stderr


def test_restore_short_of_the_guard_exits_75_naming_the_shortfall(tmp_path: Path) -> None:
    """The demo host has ~7800 MiB available: a 7000 MiB guard leaves ~800 MiB for 1024 + 1536 wanted."""
    config = write_config(tmp_path, extra="[host]\nmin_available_mib = 7000\n")
    proc = memcoord("restore", "sim-idle", "sim-hog", "--config", str(config))
    print(proc.stdout, proc.stderr)
    assert proc.returncode == EX_TEMPFAIL, (proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    budget_mib = int(lines[0].split("guard 7000 MiB: ")[1].split(" MiB")[0])
    assert 0 < budget_mib < 1024
    assert (
        lines[1]
        == f"sim-idle: 1024 MiB -> {1024 + budget_mib} MiB, {1024 - budget_mib} MiB short of 2048 MiB (host guard)"
    )
    assert lines[2] == "sim-hog: already at 512 MiB, 1536 MiB short of 2048 MiB (host guard)"
    assert "2 of 2 guests not fully restored" in proc.stderr
    assert f"sim-idle {1024 - budget_mib} MiB short, sim-hog 1536 MiB short" in proc.stderr


def _running_daemon(tmp_path: Path, uri: str, managed: list[str]) -> None:
    now_s = time.time()
    view = {
        "version": state.SCHEMA_VERSION,
        "pid": os.getpid(),
        "running": True,
        "updated_at_s": now_s,
        "next_update_by_s": now_s + 60,
        "uri": uri,
        "dry_run": False,
        "domains": [{"name": n, "managed": True} for n in managed],
        "config": {"effective": Config().model_dump(mode="json")},
    }
    state.publish(tmp_path / "state.json", view)


def test_restore_refuses_while_memcoord_runs_unless_forced(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    _running_daemon(tmp_path, "sim:", ["sim-hog", "sim-idle"])
    proc = memcoord("restore", "sim-hog", "--config", str(config))
    assert_clean_failure(proc, EX_NOPERM, "memcoord is running", "would move sim-hog again", "stop memcoord first")
    forced = memcoord("restore", "sim-hog", "--force", "--config", str(config))
    assert forced.returncode == 0, forced.stderr
    assert "warning: memcoord is running" in forced.stderr and "sim-hog: 512 MiB -> 2048 MiB" in forced.stdout
    # A daemon on another URI moves none of these guests.
    _running_daemon(tmp_path, "qemu:///system", ["sim-hog"])
    assert memcoord("restore", "sim-hog", "--config", str(config)).returncode == 0


def test_plan_on_the_simulator_prints_and_says_json(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = memcoord("plan", "--config", str(config))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[1].split()[:3] == ["DOMAIN", "MANAGED", "CLASS"]
    data = json.loads(memcoord("plan", "--json", "--config", str(config)).stdout)
    assert data["uri"] == "sim:" and [d["name"] for d in data["domains"]] == ["sim-busy", "sim-hog", "sim-idle"]
