"""Faults of the real libvirtd that need no guest: a daemon that hangs (SIGSTOP) and one that dies.

A hung daemon is the worst case: its socket still accepts, so nothing fails, calls just never return. The
bound is libvirt's keepalive (2 s x 3) on an open connection, and CONNECT_TIMEOUT_S on a reconnect.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from memcoord.core.port import HypervisorError
from memcoord.hypervisor.libvirt import (
    CONNECT_TIMEOUT_S,
    KEEPALIVE_COUNT,
    KEEPALIVE_INTERVAL_S,
    MAX_ABANDONED_CALLS,
    LibvirtHypervisor,
)
from tests.helpers.faultkit import (
    LOST,
    RECOVERED,
    URI,
    MemcoordRun,
    libvirtd_pid,
    libvirtd_restored,
    require_libvirtd,
    write_config,
)

pytestmark = pytest.mark.real

# keepalive fires after interval x count without an answer; one more interval of slack for the event loop.
HANG_BOUND_S = KEEPALIVE_INTERVAL_S * (KEEPALIVE_COUNT + 1) + 1.5


def samples_again(hv: LibvirtHypervisor, within_s: float = 30) -> None:
    """Back after SIGCONT: the next tick (or the one after, if the late connection was closed) samples again."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            hv.sample()
            return
        except HypervisorError:
            assert time.monotonic() < deadline, "no recovery after SIGCONT"
            time.sleep(0.5)


def test_a_hung_daemon_bounds_every_call_and_the_reconnect() -> None:
    require_libvirtd()
    hv = LibvirtHypervisor(URI)
    hv.sample()
    pid = libvirtd_pid()
    assert pid is not None
    measured: dict[str, float] = {}
    with libvirtd_restored():
        os.kill(pid, signal.SIGSTOP)
        for attempt in ("in-flight call", "reconnect", "reconnect again"):
            t0 = time.monotonic()
            with pytest.raises(HypervisorError):
                hv.sample()
            measured[attempt] = time.monotonic() - t0
        os.kill(pid, signal.SIGCONT)
        samples_again(hv)
    hv.close()
    print(f"hang bounds: {measured}")
    assert measured["in-flight call"] <= HANG_BOUND_S, measured
    assert measured["reconnect"] <= CONNECT_TIMEOUT_S + 1.5, measured
    assert measured["reconnect again"] <= CONNECT_TIMEOUT_S + 1.5, measured


def test_memcoord_run_survives_a_hung_daemon(tmp_path: Path) -> None:
    require_libvirtd()
    run = MemcoordRun(write_config(tmp_path / "m.toml")).start()
    try:
        run.wait_for(lambda ls: any("first tick done" in x for x in ls), 30, "first tick")
        pid = libvirtd_pid()
        assert pid is not None
        with libvirtd_restored():
            os.kill(pid, signal.SIGSTOP)
            t0 = time.monotonic()
            t_lost = run.wait_count(LOST, 1, HANG_BOUND_S + 5)
            time.sleep(20)  # stays hung across several reconnect attempts
            os.kill(pid, signal.SIGCONT)
        t_back = time.monotonic()
        t_rec = run.wait_count(RECOVERED, 1, 60)
        assert run.proc is not None and run.proc.poll() is None
    finally:
        code = run.stop()
    log = "\n".join(run.text())
    print(f"hung daemon: loss logged after {t_lost - t0:.1f} s, recovery {t_rec - t_back:.1f} s after SIGCONT")
    assert t_lost - t0 <= HANG_BOUND_S + 1.5, log
    assert run.count(LOST) == 1 and run.count(RECOVERED) == 1, log
    assert "Traceback" not in log and code == 0, log


def test_dropping_the_connection_to_a_hung_daemon_keeps_the_ticks_deadline() -> None:
    """Calls given up on pile up (libvirtd stopped dead), so the adapter drops the connection: deregistering its
    events and closing it are round trips too. Unbounded, they waited for keepalive to give up (seconds past
    the tick's deadline; for good with a daemon whose event loop still answers keepalive)."""
    require_libvirtd()
    hv = LibvirtHypervisor(URI)
    hv.sample()
    pid = libvirtd_pid()
    assert pid is not None
    deadline_in_s = 1.0
    with libvirtd_restored():
        os.kill(pid, signal.SIGSTOP)
        try:
            for _ in range(MAX_ABANDONED_CALLS):
                with pytest.raises(HypervisorError, match="no answer"):
                    hv.sample(deadline_s=time.monotonic() + 0.2)
            t0 = time.monotonic()
            with pytest.raises(HypervisorError, match="unanswered, reconnecting"):
                hv.sample(deadline_s=t0 + deadline_in_s)
            took_s = time.monotonic() - t0
        finally:
            os.kill(pid, signal.SIGCONT)
        samples_again(hv)  # a new connection works once libvirtd answers
    hv.close()
    print(f"dropping the connection to a stopped libvirtd: {took_s:.1f} s (deadline {deadline_in_s:.1f} s)")
    assert took_s <= deadline_in_s + 0.5, took_s
