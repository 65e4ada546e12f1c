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

from memcoord.admin.plan import NO_PERIOD
from memcoord.core.config import Config
from memcoord.daemon import state
from tests.helpers.cli import EX_CONFIG, EX_NOINPUT, EX_USAGE, assert_clean_failure, memcoord

EX_DATAERR, EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM = 65, 69, 75, 77
DEAD_URI = "qemu+unix:///system?socket=/nonexistent/memcoord-test/libvirt-sock"


@pytest.fixture(autouse=True)
def _own_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record of sizes before memcoord in this test's directory (the console script inherits the variable)."""
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))


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
    proc = memcoord("restore", "sim-idle", "sim-hog", "--to-max", "--config", str(write_config(tmp_path)))
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
    proc = memcoord("restore", "sim-idle", "sim-hog", "--to-max", "--config", str(config))
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


def _record(tmp_path: Path, sizes_mib: dict[str, int], uri: str = "sim:") -> Path:
    from memcoord.daemon.undo import FILE_NAME, Before, UndoRecord

    record = UndoRecord(tmp_path / FILE_NAME)
    record.add(uri, {n: Before(mib * 1024, 2048 * 1024, 0.0) for n, mib in sizes_mib.items()})
    return record.path


def test_restore_returns_guests_to_their_size_before_memcoord_and_forgets_them(tmp_path: Path) -> None:
    """sim-hog was at 1024 MiB before memcoord (the demo host has it at 512 now); sim-idle (1024 MiB now) at
    800, below where it is: never lowered; sim-busy was never changed by memcoord: left as it is."""
    path = _record(tmp_path, {"sim-hog": 1024, "sim-idle": 800})
    proc = memcoord("restore", "--config", str(write_config(tmp_path)))
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1] == (
        f"sim-busy: already at 512 MiB; no size before memcoord recorded for it in {path} (memcoord never changed it):"
        " left as it is; --to-max restores it to its maximum"
    )
    assert lines[2] == "sim-hog: 512 MiB -> 1024 MiB"
    assert lines[3] == (
        "sim-idle: already at 1024 MiB; its size before memcoord, 800 MiB is below its current size 1024 MiB: "
        "restore never lowers a guest, left as it is"
    )
    assert "restore sim-hog 512 -> 1024 MiB (memcoord restore to its size before memcoord, 1024 MiB)" in proc.stderr
    # Handed back: the record forgets them (memcoord's next change records afresh).
    assert json.loads(path.read_text())["hosts"] == {}


def test_restore_dry_run_and_a_short_restore_keep_the_record(tmp_path: Path) -> None:
    path = _record(tmp_path, {"sim-hog": 1024})
    assert memcoord("restore", "--dry-run", "--config", str(write_config(tmp_path))).returncode == 0
    short = memcoord("restore", "--config", str(write_config(tmp_path, extra="[host]\nmin_available_mib = 7800\n")))
    assert short.returncode == EX_TEMPFAIL, (short.stdout, short.stderr)
    assert set(json.loads(path.read_text())["hosts"]["sim:"]) == {"sim-hog"}


def test_restore_with_a_broken_record_names_it_and_changes_nothing(tmp_path: Path) -> None:
    path = _record(tmp_path, {"sim-hog": 1024})
    path.write_text(path.read_text()[:-20])
    proc = memcoord("restore", "--config", str(write_config(tmp_path)))
    assert_clean_failure(proc, EX_DATAERR, f"{path}: not JSON", "nothing changed", "--to-max")
    # --to-max does not need it; it leaves the file as it is.
    text = path.read_text()
    forced = memcoord("restore", "sim-hog", "--to-max", "--config", str(write_config(tmp_path)))
    assert forced.returncode == 0 and "sim-hog: 512 MiB -> 2048 MiB" in forced.stdout
    assert f"warning: {path}: not JSON" in forced.stderr and path.read_text() == text


def test_to_and_to_max_do_not_go_together() -> None:
    assert_clean_failure(memcoord("restore", "--to", "1024", "--to-max"), EX_USAGE, "not allowed with argument --to")


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
    forced = memcoord("restore", "sim-hog", "--force", "--to-max", "--config", str(config))
    assert forced.returncode == 0, forced.stderr
    assert "warning: memcoord is running" in forced.stderr and "sim-hog: 512 MiB -> 2048 MiB" in forced.stdout
    # A daemon on another URI moves none of these guests.
    _running_daemon(tmp_path, "qemu:///system", ["sim-hog"])
    assert memcoord("restore", "sim-hog", "--config", str(config)).returncode == 0


def test_plan_on_the_simulator_sets_the_stats_period_and_decides_on_fresh_stats(tmp_path: Path) -> None:
    """The demo host's guests have no stats period (as libvirt's have none by default): plan sets it, says so,
    and decides on fresh figures, none larger than the guest; with --no-stats-period it leaves them alone."""
    config = write_config(tmp_path)
    text = memcoord("plan", "--config", str(config))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[1].startswith("profile density: ")
    assert lines[2].startswith("balloon stats period set to 1 s on sim-busy, sim-hog, sim-idle")
    assert lines[3].split()[:3] == ["DOMAIN", "MANAGED", "CLASS"]
    data = json.loads(memcoord("plan", "--json", "--config", str(config)).stdout)
    assert data["uri"] == "sim:" and [d["name"] for d in data["domains"]] == ["sim-busy", "sim-hog", "sim-idle"]
    assert data["stats_period_set"] == ["sim-busy", "sim-hog", "sim-idle"]
    for d in data["domains"]:
        assert d["class"] not in ("no-stats", "stale"), d
        assert 0 <= d["stats_age_s"] <= 5 and d["usable_kib"] <= d["current_kib"], d
    off = json.loads(memcoord("plan", "--json", "--no-stats-period", "--config", str(config)).stdout)
    assert off["stats_period_set"] == []
    for d in off["domains"]:
        assert (d["class"], d["action"], d["usable_kib"]) == ("no-stats", None, None), d
        assert d["why"] == f"left alone: {NO_PERIOD}"
