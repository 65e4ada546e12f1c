#!/usr/bin/python3
"""Check, in seconds, that this machine can run the real-part tests: root, libvirtd (started if absent, as the lab
does), QEMU, systemd-nspawn and the tools the tests call. One line per missing part, exit 1; the suite never starts on
a broken environment, where its real tests would otherwise fail one by one (or, outside CI, skip).

Run after `make deps` (it checks what deps installs): `make preflight`, which `make test` runs first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Programs the tests run, with the package of `make deps` that brings each.
TOOLS = {
    "virsh": "libvirt-clients",
    "debootstrap": "debootstrap",
    "nsenter": "util-linux",
    "setpriv": "util-linux",
    "tmux": "tmux",
    "promtool": "prometheus",
    "lintian": "lintian",
    "journalctl": "systemd",
    "gcc": "gcc",
    "cpio": "cpio",
    "busybox": "busybox-static",
}


class Unusable(Exception):
    """A part the tests need is missing or broken; the message says which and how to fix it."""


def _run(cmd: list[str], timeout_s: float = 20) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise Unusable(f"{cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise Unusable(f"`{' '.join(cmd)}` did not answer in {timeout_s:.0f} s") from None
    if r.returncode != 0:
        detail = (r.stderr or r.stdout).strip().splitlines()
        raise Unusable(f"`{' '.join(cmd)}` exited {r.returncode}: {detail[-1] if detail else 'no output'}")
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else ""


def check_root() -> str:
    if os.geteuid() != 0:
        raise Unusable(f"runs as uid {os.geteuid()}, needs root (libvirt qemu:///system, nspawn, apt-get)")
    return "uid 0"


def check_libvirtd() -> str:
    from lab.libvirtd import LibvirtdError, ensure_libvirtd

    try:
        started = ensure_libvirtd(timeout_s=30)
    except LibvirtdError as exc:
        raise Unusable(str(exc)) from None
    try:
        import libvirt
    except ImportError:
        raise Unusable("python3-libvirt missing: make deps") from None
    try:
        conn = libvirt.open("qemu:///system")
        try:
            version = conn.getLibVersion()
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        raise Unusable(f"qemu:///system: {exc}") from None
    major, minor = divmod(version // 1000, 1000)
    return f"libvirt {major}.{minor} on qemu:///system" + (" (started it)" if started else "")


def check_qemu() -> str:
    return _run(["qemu-system-x86_64", "--version"])


def check_nspawn() -> str:
    return _run(["systemd-nspawn", "--version"])


def check_python_modules() -> str:
    for module, package in (("libvirt", "python3-libvirt"), ("systemd.journal", "python3-systemd")):
        try:
            __import__(module)
        except ImportError as exc:
            raise Unusable(f"python module {module}: {exc} (package {package}: make deps)") from None
    return "libvirt, systemd.journal"


def check_tools() -> str:
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise Unusable(f"not on PATH: {', '.join(missing)}: make deps")
    return ", ".join(TOOLS)


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("root", check_root),
    ("libvirtd", check_libvirtd),
    ("qemu", check_qemu),
    ("systemd-nspawn", check_nspawn),
    ("python modules", check_python_modules),
    ("tools", check_tools),
]


def main() -> int:
    failed = 0
    for name, check in CHECKS:
        try:
            what = check()
        except Unusable as exc:
            print(f"preflight: FAIL {name}: {exc}", file=sys.stderr)
            failed += 1
            if name == "root":
                break  # nothing else can be checked meaningfully without root
        else:
            print(f"preflight: ok   {name}: {what}")
    if failed:
        print(f"preflight: {failed} part(s) unusable: the tests on real parts cannot run here", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
