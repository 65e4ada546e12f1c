"""The shipped libvirt hook (packaging/libvirt-hook/memcoord), run by /bin/sh as libvirtd runs it: only on `prepare
begin`, the domain's XML passed on, bounded in time, and failing open (exit 0) whatever memcoord does. Where the
packages put it. (With real libvirtd and a real daemon: tests/e2e/test_make_room_real.py.)"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "packaging" / "libvirt-hook" / "memcoord"
XML = "<domain><name>web</name><currentMemory unit='KiB'>1048576</currentMemory></domain>"


def _fake_memcoord(tmp_path: Path, body: str) -> Path:
    """A stand-in for the memcoord command: writes its arguments and stdin to files, then runs body."""
    exe = tmp_path / "memcoord"
    exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\ncat > {tmp_path}/stdin\n{body}\n')
    exe.chmod(0o755)
    return exe


def _run_hook(
    tmp_path: Path, exe: Path, *args: str, limit_s: int = 2
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        "PATH": os.environ["PATH"],
        "MEMCOORD": str(exe),
        "MEMCOORD_CONFIG": str(tmp_path / "none.toml"),
        "MEMCOORD_HOOK_TIMEOUT_S": str(limit_s),
        "MEMCOORD_HOOK_LOG": "stderr",
    }
    t0 = time.monotonic()
    done = subprocess.run([str(HOOK), *args], input=XML, capture_output=True, text=True, env=env, timeout=30)
    return done, time.monotonic() - t0


def test_it_asks_for_the_domain_on_prepare_begin_with_its_xml(tmp_path: Path) -> None:
    exe = _fake_memcoord(tmp_path, 'echo "room for 1152 MiB"; exit 0')
    done, _ = _run_hook(tmp_path, exe, "web", "prepare", "begin", "-")
    assert done.returncode == 0
    args = (tmp_path / "args").read_text().split("\n")
    assert args[:5] == ["make-room", "--for", "web", "--domain-xml", "-"]
    assert "--timeout" in args and args[args.index("--timeout") + 1] == "2"
    assert (tmp_path / "stdin").read_text() == XML


@pytest.mark.parametrize("operation", [("start", "begin"), ("prepare", "end"), ("release", "end"), ("stopped", "end")])
def test_other_operations_do_nothing(tmp_path: Path, operation: tuple[str, str]) -> None:
    exe = _fake_memcoord(tmp_path, "exit 0")
    done, _ = _run_hook(tmp_path, exe, "web", *operation, "-")
    assert done.returncode == 0 and not (tmp_path / "args").exists()


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("echo 'cannot reach memcoord'; exit 69", "make-room failed (exit 69): starting anyway: cannot reach memcoord"),
        ("echo '300 MiB short'; exit 75", "starting without all the room it needs: 300 MiB short"),
        ("sleep 30", "memcoord did not answer within 2 s: starting anyway"),
    ],
)
def test_it_fails_open_within_its_bound(tmp_path: Path, body: str, said: str) -> None:
    exe = _fake_memcoord(tmp_path, body)
    done, took_s = _run_hook(tmp_path, exe, "web", "prepare", "begin", "-")
    assert done.returncode == 0
    assert took_s < 2 + 3, took_s  # its own bound, then TERM one second later (KILL one more after that)
    assert f"memcoord-hook: web: {said}" in done.stderr


def test_a_missing_command_fails_open(tmp_path: Path) -> None:
    done, _ = _run_hook(tmp_path, tmp_path / "not-there", "web", "prepare", "begin", "-")
    assert done.returncode == 0
    assert "not found: starting without making room" in done.stderr


def test_the_packages_ship_it_where_its_header_says() -> None:
    header = HOOK.read_text()
    assert os.access(HOOK, os.X_OK)
    assert "ln -s /usr/share/memcoord/libvirt-hook/memcoord /etc/libvirt/hooks/qemu.d/memcoord" in header
    install = (ROOT / "debian" / "memcoord.install").read_text().splitlines()
    assert "packaging/libvirt-hook/memcoord usr/share/memcoord/libvirt-hook/" in install
    makefile = (ROOT / "Makefile").read_text()
    assert (
        "install -D -m 0755 packaging/libvirt-hook/memcoord $(PREFIX)/share/memcoord/libvirt-hook/memcoord" in makefile
    )
