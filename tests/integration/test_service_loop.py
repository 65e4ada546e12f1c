"""The service loop as systemd sees it: `memcoord run` on the simulated host, sd_notify read from a real socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.notify import NotifySocket

SIM_CONFIG = (
    '[libvirt]\nuri = "sim:///demo"\n[loop]\ninterval_s = 0.2\n[host]\nmin_available_mib = {guard}\n'
    '[status]\npath = "{state}"\n'
)


@pytest.fixture
def service(tmp_path: Path, notify_socket: NotifySocket):
    config = tmp_path / "memcoord.toml"
    config.write_text(SIM_CONFIG.format(guard=1024, state=tmp_path / "state.json"))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "5000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memcoord.cli", "run", "--config", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, config, notify_socket
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    return proc.returncode, err


def test_ready_status_watchdog_then_stopping(service):
    proc, _config, ns = service
    ready_at = ns.messages.index(ns.wait_for(lambda m: m == "READY=1"))
    status = ns.wait_for(lambda m: m.startswith("STATUS=3 domains"))
    assert "host available" in status and "guard 1024 MiB" in status
    ns.wait_for(lambda m: m == "WATCHDOG=1")
    # READY comes as soon as the loop runs, after a STATUS saying it waits for its first tick: with libvirtd
    # down at boot, waiting for that tick would make `systemctl start` time out.
    assert ns.messages[ready_at - 1].startswith("STATUS=waiting for libvirt (sim:///demo)"), ns.messages[:ready_at]
    assert not any(m.startswith("STATUS=3 domains") for m in ns.messages[:ready_at])
    code, err = stop(proc)
    assert code == 0
    ns.wait_for(lambda m: m == "STOPPING=1")
    assert "memcoord stopping" in err


def test_sighup_reloads_the_new_config(service):
    proc, config, ns = service
    ns.wait_for(lambda m: m == "READY=1")
    config.write_text(SIM_CONFIG.format(guard=2000, state=config.parent / "state.json"))
    proc.send_signal(signal.SIGHUP)
    reloading = ns.wait_for(lambda m: m.startswith("RELOADING=1"))
    assert "MONOTONIC_USEC=" in reloading
    after = ns.messages.index(reloading)
    ns.wait_for(lambda m: "guard 2000 MiB" in m)
    assert "READY=1" in ns.messages[after:]
    # STATUS right after the reload keeps the domain counts and says what happened.
    assert any(m.startswith("STATUS=3 domains") and "config reloaded" in m for m in ns.messages[after:])
    running = subprocess.run(
        [
            sys.executable,
            "-m",
            "memcoord.cli",
            "print-config",
            "--running",
            "--state",
            str(config.parent / "state.json"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert running.returncode == 0, running.stderr
    assert "min_available_mib = 2000" in running.stdout
    code, err = stop(proc)
    assert code == 0
    assert "config reloaded" in err


def test_invalid_reload_keeps_the_running_config(service):
    proc, config, ns = service
    ns.wait_for(lambda m: m == "READY=1")
    config.write_text(
        SIM_CONFIG.format(guard=2000, state=config.parent / "state.json") + "[guest]\nwasteful_mib = 10\n"
    )
    proc.send_signal(signal.SIGHUP)
    failed = ns.wait_for(lambda m: m.startswith("STATUS=") and "reload failed" in m)
    assert "guest.wasteful_mib = 10" in failed
    later = ns.wait_for(lambda m: m.startswith("STATUS=3 domains") and "reload failed" in m)
    assert "guard 1024 MiB" in later  # still the old config
    assert proc.poll() is None
    code, err = stop(proc)
    assert code == 0
    assert "config reload failed, keeping the running config" in err
    assert f"{config}: guest.wasteful_mib = 10: must be greater than guest.starving_mib (150)" in err


def test_sigint_also_stops_cleanly(service):
    proc, _config, ns = service
    ns.wait_for(lambda m: m == "READY=1")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    ns.wait_for(lambda m: m == "STOPPING=1")


def test_ready_at_once_while_libvirt_is_down_and_status_says_it_waits(tmp_path: Path, notify_socket: NotifySocket):
    """libvirtd down at start (its socket absent): READY=1 anyway, and STATUS and `memcoord status` say what the
    daemon waits for. Before, READY waited for a first tick that never came and `systemctl start` timed out."""
    config = tmp_path / "memcoord.toml"
    state = tmp_path / "state.json"
    config.write_text(
        f'[libvirt]\nuri = "qemu:///system?socket={tmp_path}/no-libvirtd.sock"\n[status]\npath = "{state}"\n'
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "30000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "memcoord.cli", "run", "--config", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        notify_socket.wait_for(lambda m: m == "READY=1", timeout_s=10)
        notify_socket.wait_for(lambda m: m.startswith("STATUS=waiting for libvirt") and "retrying" in m)
        status = subprocess.run(
            [sys.executable, "-m", "memcoord.cli", "status", "--state", str(state)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert "waiting for libvirt (qemu:///system?socket=" in status.stdout, status.stdout
        assert "no tick has reached it yet" in status.stdout, status.stdout
        code, err = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, err
    assert "ready, config loaded" in err and "first tick done" not in err, err
