"""Fixtures for the system tests: one booted Debian 12 container with memcoord installed by `make install`, two lab
guests named mcsys-1/mcsys-2 on the host's libvirtd, and a handle on the memcoord unit inside the container.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.lab import Lab
from lab.libvirtd import ensure_libvirtd
from tests.helpers.container import CACHE, Container
from tests.helpers.system import (
    AS_ROOT,
    AS_ROOT_DROP_IN,
    BASE_CONFIG,
    GUEST_MAX_MIB,
    GUEST_START_MIB,
    REPO,
    UNIT,
    Unit,
    reset_guests,
    system_prereqs,
    wait_for_libvirtd,
)


@pytest.fixture(scope="session")
def container() -> Iterator[Container]:
    """A booted container in which README's `make install` has run (its output in container.install_log)."""
    why = system_prereqs()
    if why:
        pytest.skip(why)
    ensure_libvirtd()
    ct = Container(f"mcsys-ct{os.getpid()}", CACHE / f"run-{os.getpid()}")
    try:
        ct.prepare(REPO)
        ct.boot()
        started = time.monotonic()
        r = ct.sh("cd /root/memcoord && make install", check=False, timeout=600)
        ct.install_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        ct.install_log = r.stdout + r.stderr  # type: ignore[attr-defined]
        assert r.returncode == 0, f"make install failed in the container:\n{r.stdout}\n{r.stderr}"
        ct.run(["mkdir", "-p", str(Path(AS_ROOT_DROP_IN).parent)])
        ct.write(AS_ROOT_DROP_IN, AS_ROOT)
        ct.run(["systemctl", "daemon-reload"])
        yield ct
    finally:
        ct.shutdown()
        ct.remove()


@pytest.fixture(scope="session")
def lab(container: Container) -> Iterator[Lab]:
    """Two real tiny guests, mcsys-1 and mcsys-2, on the host's libvirtd (the one the container sees)."""
    wait_for_libvirtd()
    with Lab(
        prefix="mcsys-",
        n=2,
        max_mib=GUEST_MAX_MIB,
        current_mib=GUEST_START_MIB,
        run_dir=container.workdir / "lab",
    ) as lab:
        yield lab


@pytest.fixture
def unit(container: Container, lab: Lab) -> Unit:
    """memcoord started under systemd with BASE_CONFIG on guests reset to their start size and idle.

    The daemon is stopped while the guests are reset: a running one still moving a balloon toward the previous
    test's target (a guest it grew there) sets it again over the reset, and under the previous test's config (test
    3 raises the starving threshold above what an idle guest at its start size has free) it would grow them back."""
    u = Unit(container)
    if u.show("ActiveState")["ActiveState"] == "active":
        u.systemctl("stop", UNIT)
    u.write_config(BASE_CONFIG)
    reset_guests(lab)
    u.systemctl("reset-failed", UNIT, check=False)
    u.systemctl("start", UNIT)
    return u
