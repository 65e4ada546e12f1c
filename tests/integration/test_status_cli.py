"""`memcoord status` as the real CLI against a running, killed or absent `memcoord run`, and a reload it shows."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.cli import memcoord
from tests.helpers.daemon import SIM_GUESTS, Daemon, wait_for


def test_status_against_a_running_daemon(tmp_path: Path):
    daemon = Daemon(tmp_path)
    try:
        daemon.wait_ticks(10)
        result = memcoord("status", "--state", str(daemon.state_path))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"memcoord pid {daemon.proc.pid}, up ")
        assert f"config {daemon.config_path}, loaded" in result.stdout
        assert "host available" in result.stdout and "guard 1024 MiB" in result.stdout
        header = next(i for i, line in enumerate(lines) if line.startswith("DOMAIN"))
        assert {line.split()[0] for line in lines[header + 1 :]} == SIM_GUESTS

        as_json = memcoord("status", "--json", "--state", str(daemon.state_path))
        assert as_json.returncode == 0
        view = json.loads(as_json.stdout)
        assert view["pid"] == daemon.proc.pid and view["ticks"] >= 10 and view["uri"] == "sim:///demo"
        assert {d["name"] for d in view["domains"]} == SIM_GUESTS
        assert all(d["max_kib"] == 2048 * 1024 for d in view["domains"])
        # Each action the daemon logged is the last action status shows, when it was the guest's last one.
        for d in view["domains"]:
            if d["last_action"] is not None:
                a = d["last_action"]
                assert f"{a['action']} {d['name']} {a['from_kib'] // 1024} -> {a['to_kib'] // 1024} MiB" in daemon.log()
    finally:
        assert daemon.stop() == 0
    stopped = memcoord("status", "--state", str(daemon.state_path))
    assert stopped.returncode == os.EX_UNAVAILABLE
    assert "memcoord is not running" in stopped.stderr and "stopped at" in stopped.stderr
    assert stopped.stdout == ""


def test_status_of_a_killed_daemon_and_of_none(tmp_path: Path):
    daemon = Daemon(tmp_path)
    daemon.wait_ticks(2)
    daemon.stop(signal.SIGKILL)
    result = memcoord("status", "--state", str(daemon.state_path))
    assert result.returncode == os.EX_UNAVAILABLE
    assert f"pid {daemon.proc.pid} is gone" in result.stderr
    none = memcoord("status", "--json", "--state", str(tmp_path / "nowhere.json"))
    assert none.returncode == os.EX_UNAVAILABLE and "no state file" in none.stderr


def test_status_finds_the_state_file_through_the_config(tmp_path: Path):
    daemon = Daemon(tmp_path)
    try:
        daemon.wait_ticks(1)
        result = memcoord("status", "--config", str(daemon.config_path))
        assert result.returncode == 0, result.stderr
        assert "sim-hog" in result.stdout
    finally:
        daemon.stop()


def test_sighup_reload_shows_in_status(tmp_path: Path):
    daemon = Daemon(tmp_path)
    try:
        first = daemon.wait_ticks(1)
        daemon.proc.send_signal(signal.SIGHUP)
        view = wait_for(lambda: (v := daemon.view()) and v["config"]["reload"] == "ok" and v)
        assert view["config"]["loaded_at_s"] > first["config"]["loaded_at_s"]
        assert view["config"]["reloads_ok"] == 1
        assert view["started_at_s"] == first["started_at_s"]
        assert view["updated_at_s"] <= time.time()
    finally:
        daemon.stop()


def test_status_starts_without_the_config_models_or_libvirt(tmp_path: Path):
    """`memcoord status` is what an admin runs again and again: with a state file named, it starts without pydantic
    (the config models), libvirt or the Prometheus client, a tenth of a second each (cli.py imports each command's
    work when it runs)."""
    state = tmp_path / "state.json"
    state.write_text("{}")
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "memcoord.cli", "status", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", done.stderr, re.MULTILINE))
    assert "memcoord.admin.status" in modules  # the report is read (else the check below checks nothing)
    heavy = {m for m in modules if m.split(".")[0] in ("pydantic", "pydantic_core", "libvirt", "prometheus_client")}
    assert heavy == set() and "memcoord.core.config" not in modules
