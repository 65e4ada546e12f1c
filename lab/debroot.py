"""Debian roots for systemd-nspawn: built once per release and package list with debootstrap, cached as a tarball,
unpacked fresh for each use.

The system tests boot them (tests/system/container.py) and `make deb RELEASE=...` builds the package in one
(packaging/build-deb). One root per release serves every test of that release, so CI runs debootstrap once per
release. Standard library only: packaging/build-deb runs this with the system python3, before any venv exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("MEMCOORD_TEST_CACHE", "/var/cache/memcoord-test"))
MIRROR = os.environ.get("MEMCOORD_TEST_MIRROR", "http://deb.debian.org/debian")
RELEASES = ("bookworm", "trixie")
# systemd as init; procps for /bin/kill (ExecReload); man-db for `man memcoord`. The Debian 12 root of the systemd
# tests adds make + python3-* so README's `make install` finds its apt packages already there (it still runs
# apt-get, which then needs no network), and so the .deb's dependencies are there as on a KVM host.
BOOKWORM = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",
    "make",
    "ca-certificates",
    "python3",
    "python3-venv",
    "python3-libvirt",
    "python3-systemd",
    "man-db",
]
# A stock Debian 12 libvirt host on top: its own libvirtd (socket-activated by systemd, polkit for the read-write
# socket, the `libvirt` group and the polkit rule that grants it access), for running the unit as a user.
# iptables, libvirt-daemon-system-systemd and libpam-systemd (polkitd's logind) are the alternatives apt would pick:
# debootstrap does not choose among alternatives.
BOOKWORM_LIBVIRT_HOST = [
    *BOOKWORM,
    "libvirt-daemon-system",
    "libvirt-daemon-system-systemd",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "polkitd",
    "libpam-systemd",
    "iptables",
]
# What debian/bookworm/control's Build-Depends name (debhelper-compat is debhelper's), for `make deb
# RELEASE=bookworm`. No build-essential: nothing is compiled (the wheels come built), and the build checks the
# Build-Depends with `dpkg-checkbuilddeps -I` (tests/unit/test_debian.py keeps this list and the control in step).
BOOKWORM_BUILD = [
    "debhelper",
    "dh-virtualenv",
    "python3",
    "python3-venv",
    "python3-libvirt",
    "python3-systemd",
    "ca-certificates",
]
# Debian 13: the package's runtime dependencies, all from Debian (an offline install finds them here, as on a KVM
# host), and debian/control's Build-Depends. One root builds the package and boots to test it: one debootstrap.
TRIXIE_RUNTIME = [
    "python3",
    "python3-pydantic",
    "python3-prometheus-client",
    "python3-tomli-w",
    "python3-psutil",
    "python3-libvirt",
    "python3-systemd",
    "adduser",
]
TRIXIE = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "procps",
    "man-db",
    *TRIXIE_RUNTIME,
    "debhelper",
    "dh-python",
    "pybuild-plugin-pyproject",
    "python3-setuptools",
]
# The root `make deb RELEASE=R` builds in.
BUILD_ROOTS = {"bookworm": BOOKWORM_BUILD, "trixie": TRIXIE}


def tarball(release: str, packages: list[str]) -> Path:
    """The cached root tarball of `release` with `packages`, built with debootstrap (2-3 min) if absent."""
    if release not in RELEASES:
        raise ValueError(f"release {release!r}: one of {', '.join(RELEASES)}")
    key = hashlib.sha256(f"{release} {MIRROR} {' '.join(packages)}".encode()).hexdigest()[:12]
    path = CACHE / f"{release}-systemd-{key}.tar"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        work = CACHE / f"debootstrap-{key}"
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", release, str(work), MIRROR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # Lean: the downloaded .debs are installed; the tarball need not carry them.
        for deb in (work / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tmp = path.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(work), "-cf", str(tmp), "."], check=True)
        tmp.rename(path)
        shutil.rmtree(work)
    return path


def unpack(release: str, packages: list[str], root: Path) -> None:
    """A fresh root of `release` with `packages` at `root` (which must not exist or be empty)."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball(release, packages))], check=True)


def run_in(
    root: Path, script: str, network: bool, timeout_s: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a shell script in `root` as root with systemd-nspawn (no init booted), with `env` set; with
    network=False the root has only its own loopback. stdout and stderr together in .stdout."""
    setenv = [
        f"--setenv={k}={v}" for k, v in {"LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", **(env or {})}.items()
    ]
    return subprocess.run(
        [
            "systemd-nspawn",
            "-q",
            "-D",
            str(root),
            "-M",
            f"mcroot-{os.getpid()}",
            # Not registered with machined, and in the caller's own cgroup: PID 1 here need not be systemd.
            "--register=no",
            "--keep-unit",
            "--pipe",
            *([] if network else ["--private-network"]),
            *setenv,
            "--",
            "/bin/sh",
            "-ec",
            script,
        ],
        env=dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
        check=False,
    )
