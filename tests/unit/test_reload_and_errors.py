"""A reload to another libvirt URI forgets the old host; only a lost connection makes the adapter reconnect."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from memcoord.core import config as config_mod
from memcoord.core.model import mib_to_kib
from memcoord.core.policy import PolicyState
from memcoord.core.port import HypervisorError
from memcoord.daemon.service import Service
from memcoord.hypervisor.libvirt import LibvirtHypervisor
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import Hog

CONFIG = '[libvirt]\nuri = "{uri}"\n[guest]\nreclaim_step_mib = 100\n'


def host() -> SimulatedHypervisor:
    """Same guest names on every host: an idle guest to reclaim and a hungry one to grow."""
    return SimulatedHypervisor(
        [
            SimGuest("web", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(2048)),
            SimGuest("db", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(512), workload=Hog(mib_to_kib(50))),
        ],
        host_total_kib=mib_to_kib(16384),
    )


def test_a_reload_to_another_uri_resets_the_policy_state(tmp_path: Path) -> None:
    hosts = {"sim:///a": host(), "sim:///b": host()}
    path = tmp_path / "memcoord.toml"
    path.write_text(CONFIG.format(uri="sim:///a"))
    service = Service(path, config_mod.load(path), hosts.__getitem__)
    for _ in range(4):
        assert service.tick()
        hosts["sim:///a"].advance(1.0)
    assert service.state != PolicyState(), service.state  # the old host's memory: samples, grants, ...
    path.write_text(CONFIG.format(uri="sim:///b"))
    service.reload()
    assert service.hypervisor is hosts["sim:///b"]
    assert service.state == PolicyState()
    # A reload that keeps the URI keeps what the policy knows.
    assert service.tick()
    kept = service.state
    path.write_text(CONFIG.format(uri="sim:///b").replace("100", "50"))
    service.reload()
    assert service.state is kept


class _FailingConn:
    """A connection whose bulk stats call fails with a given libvirt error code; alive unless told."""

    def __init__(self, code: int, domain: int = libvirt.VIR_FROM_QEMU, alive: bool = True) -> None:
        self.code, self.domain, self.alive, self.closed = code, domain, alive, False

    def getAllDomainStats(self, *_args: object) -> list[object]:
        exc = libvirt.libvirtError("injected")
        exc.err = (self.code, self.domain, "injected error", libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
        raise exc

    def isAlive(self) -> int:
        return int(self.alive)

    def close(self) -> int:
        self.closed = True
        return 0


@pytest.mark.parametrize(
    ("code", "domain", "alive", "dropped"),
    [
        (libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU, True, False),
        (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_QEMU, True, False),
        (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_FROM_QEMU, True, False),
        (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, True, True),
        (libvirt.VIR_ERR_RPC, libvirt.VIR_FROM_RPC, True, True),
        (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC, True, True),
        (libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU, False, True),
    ],
)
def test_only_connection_errors_drop_the_connection(code: int, domain: int, alive: bool, dropped: bool) -> None:
    hv = LibvirtHypervisor("qemu:///system")
    conn = _FailingConn(code, domain, alive)
    hv._conn = conn  # type: ignore[assignment]
    with pytest.raises(HypervisorError, match="injected error"):
        hv.sample()
    assert (hv._conn is None) is dropped
    assert conn.closed is dropped


def test_a_reload_validates_in_this_process_and_runs_on_the_models_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No process is started to validate the file (a moved interpreter or a slow boot cannot fail a reload), and
    the service runs on the frozen Config itself; a bad file keeps the running one."""
    import os
    import subprocess

    def no_process(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a reload started a process")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(os, "posix_spawn", no_process)
    path = tmp_path / "memcoord.toml"
    path.write_text(CONFIG.format(uri="sim:///a"))
    service = Service(path, config_mod.load(path), lambda _uri: host())
    path.write_text(CONFIG.format(uri="sim:///a").replace("100", "50"))
    service.reload()
    assert type(service.config) is config_mod.Config and service.config.guest.reclaim_step_mib == 50
    path.write_text("[guest]\nmin_mib = 0\n")
    service.reload()
    assert service.config.guest.reclaim_step_mib == 50 and service.reload_note.startswith("reload failed")
    assert "guest.min_mib = 0" in service.reload_note
