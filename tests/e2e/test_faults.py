"""Faults on real guests: tiny QEMU guests from the lab (virtio balloon, serial console), the real libvirtd and
`memcoord run` as a subprocess. Every guest is named mcfault-*, every memcoord manages only mcfault-*.

What must hold: memcoord never crashes, logs one line per loss and per recovery, resumes within a few
ticks; guests that come and go are skipped and picked up; guests without usable stats are never reclaimed and
reported once; a failing setMemory is logged with its domain and value and the tick goes on; no guest is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

import lab.image as image_mod
import lab.lab as lab_mod
from memcoord.core import config as config_mod
from memcoord.core.model import Action, Change, GuestClass
from memcoord.daemon import journal, timeline
from memcoord.daemon.service import Service
from memcoord.hypervisor.libvirt import LibvirtHypervisor
from tests.helpers.faultkit import (
    LOST,
    RECOVERED,
    URI,
    MemcoordRun,
    kill_libvirtd,
    libvirtd_restored,
    require_libvirtd,
    start_libvirtd,
    write_config,
)

pytestmark = pytest.mark.real
REPO = Path(__file__).resolve().parents[2]
MIB = 1024
RESTARTS = 10


@pytest.fixture(scope="module")
def lab() -> Iterator[object]:
    require_libvirtd()
    image = image_mod.build_image()
    with lab_mod.Lab(prefix="mcfault-", n=2, max_mib=1024, current_mib=1024, image=image) as the_lab:
        yield the_lab
        _reconnect(the_lab)  # a test may have restarted libvirtd: down() needs a live connection


def _reconnect(the_lab) -> None:  # type: ignore[no-untyped-def]
    start_libvirtd()
    the_lab.conn = libvirt.open(URI)
    for g in the_lab.guests:
        g.domain = the_lab.conn.lookupByName(g.name)


@contextlib.contextmanager
def extra_guest(the_lab, name: str, max_mib: int, current_mib: int, cmdline_extra: str = "", period_s: int = 1):  # type: ignore[no-untyped-def]
    """One more guest of the lab's image, defined here (odd kernel options or no stats period)."""
    conn = libvirt.open(URI)
    xml = lab_mod.domain_xml(name, the_lab.image, the_lab.run_dir / f"{name}.sock", max_mib, current_mib, period_s)
    if cmdline_extra:
        xml = xml.replace("panic=-1", f"panic=-1 {cmdline_extra}")
    if period_s == 0:
        xml = xml.replace("<stats period='0'/>", "")
    _remove(name)  # left behind by a run that was killed before its cleanup
    dom = conn.defineXML(xml)
    try:
        dom.create()
        yield dom
    finally:
        _remove(name)


def _remove(name: str) -> None:
    """Destroy and undefine one of this file's own mcfault-* domains, if it exists."""
    with contextlib.suppress(libvirt.libvirtError):
        dom = libvirt.open(URI).lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def _alive(the_lab) -> list[str]:  # type: ignore[no-untyped-def]
    """Names of lab guests whose domain runs and whose shell answers: the guests not lost."""
    conn = libvirt.open(URI)
    out = []
    for g in the_lab.guests:
        with contextlib.suppress(libvirt.libvirtError, Exception):
            if conn.lookupByName(g.name).isActive() and the_lab.run(g.name, "echo alive", timeout_s=20)[0] == 0:
                out.append(g.name)
    conn.close()
    return out


def test_libvirtd_killed_and_restarted_10_times(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Small reclaim steps keep memcoord busy with the idle 1 GiB guests for the whole test.
    config = write_config(tmp_path / "m.toml", guest={"reclaim_step_mib": 4})
    run = MemcoordRun(config).start()
    recovery_s: list[float] = []
    try:
        run.wait_for(lambda _ls: len(run.actions()) >= 2, 60, "first reclaims")
        with libvirtd_restored():
            for i in range(1, RESTARTS + 1):
                kill_libvirtd(signal.SIGKILL)
                run.wait_count(LOST, i, 15)
                time.sleep(1.0)
                start_libvirtd()
                t_up = time.monotonic()
                t_rec = run.wait_count(RECOVERED, i, 60)
                recovery_s.append(t_rec - t_up)
                n_actions = len(run.actions())
                run.wait_for(lambda _ls, n=n_actions: len(run.actions()) > n, 15, f"an action after restart {i}")
        assert run.proc is not None and run.proc.poll() is None, "memcoord died"
    finally:
        code = run.stop()
        _reconnect(lab)
    lines = run.text()
    log = "\n".join(lines)
    print(f"restarts survived: {RESTARTS}, recovery after the daemon answered: {[f'{s:.1f}' for s in recovery_s]}")
    assert code == 0 and "Traceback" not in log, log
    assert run.count(LOST) == RESTARTS and run.count(RECOVERED) == RESTARTS, log
    assert max(recovery_s) <= 20, recovery_s  # backoff is 1, 2, 4 ... s: a few ticks
    assert "setMemory failed" not in log, log
    # No stale target: every setMemory starts from where the previous one left the guest (balloon converged).
    for g in lab.guests:
        steps = run.actions(g.name)
        assert steps, f"{g.name}: no action in the timeline"
        for prev, step in itertools.pairwise(steps):
            assert abs(step.from_kib - prev.to_kib) <= 4 * MIB, (g.name, prev, step)
    assert sorted(_alive(lab)) == sorted(g.name for g in lab.guests), "a guest was lost"


def test_guest_destroyed_and_another_started_mid_run(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = write_config(tmp_path / "m.toml")
    run = MemcoordRun(config).start()
    victim = "mcfault-gone"
    newcomer = "mcfault-new"
    try:
        with extra_guest(lab, victim, 1024, 768):
            run.wait_for(lambda ls: any("first tick done" in x for x in ls), 30, "first tick")
            time.sleep(3)
            conn = libvirt.open(URI)
            conn.lookupByName(victim).destroy()
            # No stats period in its XML: memcoord must set it.
            with extra_guest(lab, newcomer, 1024, 1024, period_s=0) as dom:
                deadline = time.monotonic() + 60
                updates = set()
                while len(updates) < 3:
                    assert time.monotonic() < deadline, f"{newcomer}: stats never flowed (period not set?)"
                    stats = dom.memoryStats()
                    if "last_update" in stats and "unused" in stats:
                        updates.add(stats["last_update"])
                    time.sleep(1)
                period = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_BALLOON, 0)
                assert any(d.name() == newcomer for d, _s in period)
                time.sleep(5)
        assert run.proc is not None and run.proc.poll() is None
    finally:
        code = run.stop()
    lines = run.text()
    log = "\n".join(lines)
    assert code == 0 and "Traceback" not in log, log
    for name in (victim, newcomer):
        noisy = [x for x in lines if name in x and (" WARNING " in x or " ERROR " in x)]
        assert len(noisy) <= 1, noisy
    assert LOST not in log, log
    assert sorted(_alive(lab)) == sorted(g.name for g in lab.guests)


def test_guests_without_usable_stats_are_never_reclaimed_and_reported_once(lab, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No balloon driver (the module is blacklisted in the guest kernel) and stats that stopped (a guest whose
    vCPU is paused: its last-update freezes). Both are 1 GiB and idle: with stats they would be reclaimed."""
    config = write_config(tmp_path / "m.toml")
    nodrv, frozen = "mcfault-nodrv", "mcfault-frozen"
    with (
        extra_guest(lab, nodrv, 1024, 1024, cmdline_extra="module_blacklist=virtio_balloon"),
        extra_guest(lab, frozen, 1024, 1024) as frozen_dom,
    ):
        conn = libvirt.open(URI)
        deadline = time.monotonic() + 60
        while "unused" not in frozen_dom.memoryStats() or frozen_dom.memoryStats().get("actual", 0) > 1024 * MIB:
            assert time.monotonic() < deadline, "frozen guest never reported stats"
            time.sleep(1)
        time.sleep(3)
        frozen_dom.suspend()
        run = MemcoordRun(config).start()
        try:
            run.wait_for(lambda ls: sum("left alone" in x for x in ls) >= 2, 40, "both reported")
            time.sleep(10)
            assert run.proc is not None and run.proc.poll() is None
            nodrv_stats = conn.lookupByName(nodrv).memoryStats()
            assert "unused" not in nodrv_stats, nodrv_stats
            frozen_dom.resume()
            run.wait_for(lambda ls: any(f"{frozen}: balloon stats flowing again" in x for x in ls), 30, "resume")
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                frozen_dom.resume()
            code = run.stop()
    lines = run.text()
    log = "\n".join(lines)
    assert code == 0 and "Traceback" not in log, log
    for name in (nodrv, frozen):
        reported = [x for x in lines if name in x and "left alone" in x]
        assert len(reported) == 1, (name, reported)
    ticks = run.timeline()
    assert ticks, "memcoord wrote no timeline"
    for name in (nodrv, frozen):
        # The resumed guest may be reclaimed once its stats flow again; in a tick that classed it without usable
        # stats, never. The class and the actions are the same tick's, both from the daemon's timeline.
        early = []
        for tick in ticks:
            cls = next((d["class"] for d in tick["domains"] if d["name"] == name), None)
            lowered = [a for a in timeline.actions(tick) if a.domain == name and a.to_kib < a.from_kib]
            if lowered and cls in (GuestClass.NO_STATS, GuestClass.STALE):
                early.append((cls, lowered))
        assert not early, (name, early)
        assert any(d["name"] == name for tick in ticks for d in tick["domains"]), f"{name} never in the timeline"
        if name == nodrv:
            reclaims = [a for a in run.actions(nodrv) if a.to_kib < a.from_kib]
            assert not reclaims, reclaims


def test_set_memory_failures_are_logged_with_domain_and_value(lab, caplog) -> None:  # type: ignore[no-untyped-def]
    """Above the maximum (real libvirt refuses), through the adapter and through the service; a domain destroyed
    between sample and apply is no failure."""
    hv = LibvirtHypervisor(URI)
    try:
        snapshot = hv.sample()
        g1, g2 = (next(d for d in snapshot.domains if d.name == g.name) for g in lab.guests)
        results = hv.apply(
            [
                Change(g1.name, Action.GROW, g1.current_kib, g1.max_kib + 512 * MIB, "fault test: above max"),
                Change(g2.name, Action.RECLAIM, g2.current_kib, g2.current_kib - 8 * MIB, "fault test: fine"),
            ]
        )
        assert not results[0].ok and results[0].error, results[0]
        assert results[1].ok, results[1]
        print(f"libvirt on a target above max: {results[0].error}")
    finally:
        hv.close()

    # Through the service, three guests below the floor (min_mib). First the floor is 600 MiB and va is destroyed
    # between the tick's sample and its setMemory calls (an admin's shutdown landing mid-tick): that is no
    # failure (nothing logged, no error counted) and the tick goes on to vb and vc.
    class DestroyBeforeApply(LibvirtHypervisor):
        def apply(self, changes, deadline_s=None):  # type: ignore[no-untyped-def]
            with contextlib.suppress(libvirt.libvirtError):
                libvirt.open(URI).lookupByName("mcfault-va").destroy()
            return super().apply(changes, deadline_s)

    # Then the floor is 1100 MiB, above the guests' 1024 MiB maximum: vc is raised to its maximum, and vb's sample
    # says its maximum is 1 GiB more than libvirt's (a view gone stale), so its floor is asked for and libvirt
    # refuses it: a real refusal, logged with its domain and values, and the tick goes on.
    class VbMaxOverstated(LibvirtHypervisor):
        def sample(self, deadline_s=None, only=None):  # type: ignore[no-untyped-def]
            snap = super().sample(deadline_s, only)
            doms = tuple(
                dataclasses.replace(d, max_kib=d.max_kib + 1024 * MIB) if d.name == "mcfault-vb" else d
                for d in snap.domains
            )
            return dataclasses.replace(snap, domains=doms)

    def ticks(config_text: str, hypervisor: type[LibvirtHypervisor]) -> Service:
        service = Service(Path("/dev/null"), config_mod.parse(config_text), hypervisor)
        try:
            with caplog.at_level(logging.DEBUG, logger="memcoord"):
                assert service.tick()
                assert service.tick()
        finally:
            service.hypervisor.close()
        return service

    def clamped(name: str, to_mib: int) -> list[str]:
        to_kib = to_mib * MIB
        return [
            r.getMessage()
            for r in caplog.records
            if getattr(r, "MEMCOORD_DOMAIN", None) == name
            and r.MEMCOORD_ACTION == Action.CLAMP
            and getattr(r, "MESSAGE_ID", None) == Action.CLAMP.message_id
            and getattr(r, "MEMCOORD_TO_KIB", None) == to_kib
        ]

    def failed() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "setMemory failed" in r.getMessage()]

    domains = '[libvirt]\ndomains = ["mcfault-v*"]\n'
    with (
        extra_guest(lab, "mcfault-va", 1024, 512) as va,
        extra_guest(lab, "mcfault-vb", 1024, 512) as vb,
        extra_guest(lab, "mcfault-vc", 1024, 512) as vc,
    ):
        # balloon.current starts at the max and falls to currentMemory once the guest's driver loads.
        # Settled = at most 520 MiB on two readings a second apart (one reading can catch the fall half-way).
        deadline = time.monotonic() + 60
        settled = 0
        while settled < 2:
            assert time.monotonic() < deadline, "victims' balloons never settled"
            low = all(d.memoryStats().get("actual", 1 << 40) <= 520 * MIB for d in (va, vb, vc))
            settled = settled + 1 if low else 0
            time.sleep(1)
        service = ticks(domains + "[guest]\nmin_mib = 600\n", DestroyBeforeApply)
        assert not failed(), [r.getMessage() for r in caplog.records]
        assert "set_memory" not in service.observer.errors_by_kind, service.observer.errors_by_kind
        assert clamped("mcfault-vb", 600) and clamped("mcfault-vc", 600), [r.getMessage() for r in caplog.records]
        caplog.clear()
        ticks(domains + "[guest]\nmin_mib = 1100\n", VbMaxOverstated)
    [refused] = failed()
    message = refused.getMessage()
    # The journal's fields, not the message's wording: which guest, which kind, from where to where.
    assert refused.MEMCOORD_ACTION == Action.CLAMP and refused.MESSAGE_ID == journal.MESSAGE_ID_SET_MEMORY_FAILED
    assert refused.MEMCOORD_DOMAIN == "mcfault-vb" and refused.MEMCOORD_TO_KIB == 1100 * MIB
    # (From where its balloon is: on its way to the first part's 600 MiB, or there.)
    assert 500 * MIB <= refused.MEMCOORD_FROM_KIB <= 605 * MIB, refused.MEMCOORD_FROM_KIB
    assert clamped("mcfault-vc", 1024), (
        "the tick did not go on to the next guest",
        [r.getMessage() for r in caplog.records],
    )
    print(f"setMemory refused by libvirt, through the service: {message}")
