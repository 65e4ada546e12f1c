"""Status and metrics against real libvirt and real tiny guests: what memcoord publishes is what libvirt says.

Dry run, so memcoord never moves the balloons and every figure can be compared exactly: sizes always, guest
stats when both sides saw the same guest sample (same balloon.last-update).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.lab import Lab
from lab.libvirtd import ensure_libvirtd
from tests.helpers.cli import memcoord
from tests.helpers.daemon import free_port, wait_for

pytestmark = pytest.mark.real


def test_status_and_metrics_agree_with_libvirt(tmp_path: Path):
    ensure_libvirtd()
    port = free_port()
    state_path = tmp_path / "state.json"
    with Lab(prefix="mcobs-", n=2, max_mib=1024, current_mib=512, run_dir=tmp_path / "lab") as lab:
        config = tmp_path / "memcoord.toml"
        config.write_text(
            f'[libvirt]\nuri = "qemu:///system"\ndomains = ["{lab.domain_glob}"]\n'
            f"[loop]\ninterval_s = 0.5\ndry_run = true\n"
            f'[status]\npath = "{state_path}"\n[metrics]\nenabled = true\nport = {port}\n'
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "memcoord.cli", "run", "--config", str(config)],
            stderr=(tmp_path / "memcoord.log").open("w"),
        )
        try:
            wait_for(lambda: state_path.exists() and json.loads(state_path.read_text())["ticks"] >= 4, 30)

            def matched() -> tuple[dict, dict] | None:
                """A status and a libvirt sample that saw the same guest stats, for every lab guest."""
                result = memcoord("status", "--json", "--state", str(state_path))
                assert result.returncode == 0, result.stderr
                view = json.loads(result.stdout)
                stats = lab.balloon_stats()
                mine = {d["name"]: d for d in view["domains"] if d["name"] in lab.names}
                same = all(mine[n]["stats_updated_at_s"] == stats[n].get("balloon.last-update") for n in lab.names)
                return (mine, stats) if same else None

            mine, stats = wait_for(matched, 30, every_s=0.2)
            for name in lab.names:
                d, s = mine[name], stats[name]
                assert d["managed"] and d["class"] != "unmanaged"
                assert d["current_kib"] == s["balloon.current"]
                assert d["max_kib"] == s["balloon.maximum"] == 1024 * 1024
                assert d["unused_kib"] == s["balloon.unused"]
                assert d["usable_kib"] == s["balloon.usable"]
                assert d["target_kib"] is None  # dry run: memcoord set nothing

            human = memcoord("status", "--state", str(state_path))
            assert human.returncode == 0 and "DRY RUN" in human.stdout
            assert all(any(line.startswith(name + " ") for line in human.stdout.splitlines()) for name in lab.names)

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
            actual = {
                s.labels["domain"]: s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "memcoord_domain_current_bytes"
            }
            now = lab.balloon_stats()  # dry run and settled guests: the balloon does not move
            assert {n: actual[n] for n in lab.names} == {n: now[n]["balloon.current"] * 1024 for n in lab.names}
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, (tmp_path / "memcoord.log").read_text()
    assert memcoord("status", "--state", str(state_path)).returncode == os.EX_UNAVAILABLE
