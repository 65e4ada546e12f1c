"""make-room: the daemon's socket and reservations (daemon/room.py) and the command (admin/makeroom.py), over a
real unix socket. Who may ask by real peer credentials is tests/integration/test_make_room_socket.py."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from memcoord.admin import makeroom
from memcoord.cli import main as cli_main
from memcoord.core.config import parse
from memcoord.core.model import Action, DomainStats, HostStats, Snapshot, mib_to_kib
from memcoord.core.room import Reservation
from memcoord.daemon.room import RoomDesk, may_ask, parse_request
from memcoord.hypervisor.domain_settings import start_memory_kib
from tests.helpers.room import Clock, desk_for, serve


def _snapshot(*domains: DomainStats) -> Snapshot:
    return Snapshot(HostStats(available_kib=mib_to_kib(4096), total_kib=mib_to_kib(8192)), domains, 0.0)


def test_a_request_is_held_and_answered_room_once_the_budget_covers_it(tmp_path: Path) -> None:
    clock = Clock()
    desk = desk_for(tmp_path, clock)
    done = threading.Event()
    seen = serve(desk, done, [-mib_to_kib(300), -mib_to_kib(100), 0], clock)
    try:
        answer = makeroom.ask(str(tmp_path / "room.sock"), mib_to_kib(512), None, timeout_s=5.0)
    finally:
        done.set()
    assert answer["state"] == "room"
    assert seen[0] == mib_to_kib(512)  # no domain: no QEMU overhead added
    assert [r.want_kib for r in desk.reservations] == [mib_to_kib(512)]  # held after the answer
    assert oct(os.stat(tmp_path / "room.sock").st_mode & 0o777) == "0o660"
    desk.close()
    assert not (tmp_path / "room.sock").exists()


def test_a_request_short_at_its_wait_is_answered_with_the_shortfall(tmp_path: Path) -> None:
    clock = Clock()
    desk = desk_for(tmp_path, clock)
    done = threading.Event()
    serve(desk, done, [-mib_to_kib(700)], clock)
    try:
        answer = makeroom.ask(str(tmp_path / "room.sock"), mib_to_kib(512), "vm1", timeout_s=4.0)
    finally:
        done.set()
        desk.close()
    # The shortfall is at most what was asked (with QEMU's overhead for a domain), however short the host is.
    assert answer == {"state": "short", "short_kib": mib_to_kib(612)}


def test_a_domains_reservation_shrinks_as_its_qemu_takes_memory_and_ends_after_hold_s() -> None:
    r = Reservation(mib_to_kib(612), "vm1", until_s=160.0)
    assert r.held_kib(_snapshot()) == mib_to_kib(612)  # not running yet
    booting = DomainStats("vm1", current_kib=mib_to_kib(512), max_kib=mib_to_kib(512), rss_kib=mib_to_kib(200))
    assert r.held_kib(_snapshot(booting)) == mib_to_kib(412)
    other = DomainStats("vm2", current_kib=mib_to_kib(512), max_kib=mib_to_kib(512), rss_kib=mib_to_kib(600))
    assert r.held_kib(_snapshot(other)) == mib_to_kib(612)
    clock = Clock()
    desk = RoomDesk(clock)
    desk.reservations = [r, Reservation(mib_to_kib(100), None, until_s=120.0)]
    assert desk.reserved_kib(_snapshot(booting)) == mib_to_kib(512)
    clock.now_s = 130.0
    assert desk.reserved_kib(_snapshot(booting)) == mib_to_kib(412)
    full = DomainStats("vm1", current_kib=mib_to_kib(512), max_kib=mib_to_kib(512), rss_kib=mib_to_kib(640))
    assert desk.reserved_kib(_snapshot(full)) == 0
    assert desk.reservations == []


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"nonsense", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"kib": 0}', "kib must be"),
        (b'{"kib": true}', "kib must be"),
        (b'{"kib": 1024, "domain": ""}', "domain must be"),
        (b'{"kib": 1024, "wait_s": 61}', "wait_s must be between 0 and [room] hold_s (60)"),
    ],
)
def test_a_bad_request_is_refused_with_what_is_wrong(line: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_request(line, hold_s=60.0)


def test_who_may_ask() -> None:
    group = 4242
    assert may_ask(0, 0, set(), group)
    assert may_ask(os.geteuid(), 0, set(), None)
    assert may_ask(1000, group, set(), group)
    assert may_ask(1000, 100, {7, group}, group)
    assert not may_ask(1000, 100, {7}, group)
    assert not may_ask(1000, 100, {group}, None)  # no [status] group: root and the daemon's user only


def test_start_memory_is_the_current_memory_in_its_unit() -> None:
    xml = "<domain><name>vm1</name><memory unit='GiB'>2</memory><currentMemory unit='MiB'>768</currentMemory></domain>"
    assert start_memory_kib(xml) == ("vm1", mib_to_kib(768))
    assert start_memory_kib("<domain><name>x</name><memory>1048576</memory></domain>") == ("x", mib_to_kib(1024))
    with pytest.raises(ValueError, match="no <currentMemory> nor <memory>"):
        start_memory_kib("<domain><name>x</name></domain>")
    with pytest.raises(ValueError, match="not a size"):
        start_memory_kib("<domain><memory unit='parsecs'>3</memory></domain>")


def test_the_command_exits_69_without_a_daemon_and_65_on_xml_without_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[room]\nsocket = "{tmp_path / "none.sock"}"\n')
    assert cli_main(["make-room", "--mib", "100", "--config", str(cfg), "--timeout", "1"]) == os.EX_UNAVAILABLE
    assert "is memcoord running?" in capsys.readouterr().err
    xml = tmp_path / "vm.xml"
    xml.write_text("<domain><name>vm1</name></domain>")
    argv = ["make-room", "--for", "vm1", "--domain-xml", str(xml), "--config", str(cfg), "--timeout", "1"]
    assert cli_main(argv) == os.EX_DATAERR
    assert "no <currentMemory> nor <memory>" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["make-room", "--mib", "100", "--for", "vm1"])
    assert exit_.value.code == os.EX_USAGE


def test_the_command_exits_0_with_room_and_75_when_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[room]\nsocket = "{tmp_path / "room.sock"}"\nhold_s = 60\n')
    for budgets, code, said in (([-1024, 0], os.EX_OK, "room for 200 MiB"), ([-mib_to_kib(50)], 75, "50 MiB short")):
        clock = Clock()
        desk = desk_for(tmp_path, clock)
        done = threading.Event()
        serve(desk, done, budgets, clock)
        try:
            assert cli_main(["make-room", "--mib", "200", "--config", str(cfg), "--timeout", "3"]) == code
        finally:
            done.set()
            desk.close()
        assert said in capsys.readouterr()[0 if code == 0 else 1]


def test_the_service_serves_the_socket_between_ticks_and_ticks_at_once_with_the_room_held(tmp_path: Path) -> None:
    from memcoord.daemon.observe import Observer
    from memcoord.daemon.service import Service
    from memcoord.sim.host import SimGuest, SimulatedHypervisor

    sim = SimulatedHypervisor(
        [SimGuest("idle", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(2048))], host_total_kib=mib_to_kib(8192)
    )
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[room]\nsocket = "{tmp_path / "room.sock"}"\nhold_s = 30\n[host]\nguest_overhead_mib = 100\n')
    service = Service(cfg, parse(cfg.read_text()), lambda _uri: sim, observer=Observer(publish=False))
    service.room.configure(service.config)
    # While the asker waits (a hook: libvirtd holds the starting domain's lock), a tick samples only the domains
    # the last one saw, by handle; afterwards every domain again.
    sampled_only: list[frozenset[str] | None] = []
    sample = sim.sample
    sim.sample = lambda deadline_s=None, only=None: sampled_only.append(only) or sample(deadline_s, only)  # type: ignore[method-assign]
    answers: list[dict[str, Any]] = []
    asker = threading.Thread(
        target=lambda: answers.append(makeroom.ask(str(tmp_path / "room.sock"), mib_to_kib(300), "new", 3.0))
    )
    try:
        assert service.tick()
        asker.start()
        service._sleep(2.0)  # the request ends the wait between ticks
        assert service._tick_now
        assert service.tick()
        view = service.observer.build_view(0.0, 1.0)
        assert view["host"]["reserved_kib"] == mib_to_kib(400)  # what "new" asked for, plus QEMU's overhead
        assert "holding 400 MiB for a VM about to start" in service._status_line
        asker.join(5)
        assert service.tick()
        assert sampled_only == [None, frozenset({"idle"}), None]
    finally:
        service.room.close()
        service._close_wakeup()
    assert answers and answers[0]["state"] in ("room", "short")


def test_the_policy_relieves_for_the_room_held_says_why_and_lets_nobody_grow_into_it() -> None:
    """3 GiB above the guard, 3.5 GiB held for a VM about to start: relief from above the low lines, with the
    reason; a starving guest is not grown into the room; without the reservation nobody is relieved."""
    from tests.helpers.snapshots import NOW_S, by_name, dom, snap, two_ticks
    from tests.helpers.snapshots import bump as _bump

    doms = [dom("cache", 3072, 16, usable_mib=2500, max_mib=4096), dom("starving", 1024, 100)]
    first, second = (
        snap(*doms, available_mib=4096),
        snap(*(_bump(d) for d in doms), available_mib=4096, now_s=NOW_S + 1),
    )

    def held(s: Snapshot, kib: int) -> Snapshot:
        return dataclasses.replace(s, host=dataclasses.replace(s.host, reserved_kib=kib))

    plan = two_ticks(held(first, mib_to_kib(3584)), held(second, mib_to_kib(3584)))
    changes = by_name(plan)
    assert set(changes) == {"cache"} and changes["cache"].delta_kib < 0
    assert changes["cache"].reason.startswith("host short (host budget -512 MiB: below its guard, or room held for")
    assert changes["cache"].to_kib >= plan.bands["cache"].low_kib
    free = by_name(two_ticks(first, second))
    assert all(c.action is not Action.RELIEVE for c in free.values()) and free["starving"].delta_kib > 0
