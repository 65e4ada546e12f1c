"""The record of each guest's size before memcoord first changed it (daemon/undo.py), on a real file: it is
written before the first setMemory, never replaced for a guest already in it, survives a new daemon, and a file
that cannot be read is never overwritten; the daemon then leaves unrecorded guests alone and says so once."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from memcoord.core.config import parse
from memcoord.core.model import Action, ApplyResult, Change, mib_to_kib
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import Service
from memcoord.daemon.undo import (
    FILE_NAME,
    NOT_RECORDED,
    Before,
    RecordError,
    RecordingHypervisor,
    UndoRecord,
    record_path,
)
from memcoord.sim.host import Idle, SimGuest, SimulatedHypervisor

URI = "qemu:///system"
MIB = 1024


def _sim() -> SimulatedHypervisor:
    return SimulatedHypervisor(
        [
            SimGuest("web", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1536), workload=Idle(mib_to_kib(200))),
            SimGuest("db", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024), workload=Idle(mib_to_kib(200))),
        ],
        host_total_kib=mib_to_kib(16384),
    )


def _reclaim(name: str, from_mib: int, to_mib: int) -> Change:
    return Change(name, Action.RECLAIM, mib_to_kib(from_mib), mib_to_kib(to_mib), "test")


def test_the_state_directory_is_systemds_then_var_lib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert record_path() == Path("/var/lib/memcoord") / FILE_NAME
    monkeypatch.setenv("STATE_DIRECTORY", "/srv/mc:/other")
    assert record_path() == Path("/srv/mc") / FILE_NAME


def test_add_keeps_the_first_size_and_drop_forgets(tmp_path: Path) -> None:
    record = UndoRecord(tmp_path / "state" / FILE_NAME)
    assert record.read() == {}
    first = Before(1536 * MIB, 2048 * MIB, 1.0)
    assert record.add(URI, {"web": first}) == {"web": first}
    # A later size for the same guest is not the one before memcoord: never replaces it.
    assert record.add(URI, {"web": Before(512 * MIB, 2048 * MIB, 2.0), "db": first})["web"] == first
    assert record.add("qemu+ssh://other/system", {"web": Before(4 * MIB, 8 * MIB, 3.0)})
    assert set(record.read()) == {URI, "qemu+ssh://other/system"}
    record.drop(URI, ["web", "not-there"])
    assert set(record.read()[URI]) == {"db"}
    # Written whole: no temporary file left beside it, mode 0640.
    assert sorted(p.name for p in record.path.parent.iterdir()) == [FILE_NAME]
    assert record.path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not JSON"),
        ('{"version": 9, "hosts": {}}', "not a memcoord size record"),
        (
            '{"version": 1, "hosts": {"qemu:///system": {"web": {"size_kib": -5, "max_kib": 1, "recorded_at_s": 0}}}}',
            'hosts."qemu:///system"."web": size_kib and max_kib must be whole numbers above 0',
        ),
    ],
)
def test_a_corrupt_record_is_named_and_never_overwritten(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / FILE_NAME
    path.write_text(text)
    record = UndoRecord(path)
    with pytest.raises(RecordError) as info:
        record.add(URI, {"web": Before(MIB, 2 * MIB, 0.0)})
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message and "left as it is" in message
    assert path.read_text() == text
    with pytest.raises(RecordError):
        record.drop(URI, ["web"])
    assert path.read_text() == text


def test_an_unreadable_record_is_named(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.mkdir()  # root reads any file whatever its mode; a directory it cannot read as a file
    with pytest.raises(RecordError, match=f"^{path}: cannot read the record of sizes before memcoord: "):
        UndoRecord(path).read()


class _Spy:
    """A hypervisor that, at each setMemory, notes what the record held at that moment."""

    def __init__(self, real: SimulatedHypervisor, record: UndoRecord) -> None:
        self.real, self.record = real, record
        self.seen_at_apply: list[dict[str, Before]] = []
        self.applied: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        self.seen_at_apply.append(dict(self.record.read().get(URI, {})))
        self.applied += [c.domain for c in changes]
        return self.real.apply(changes, deadline_s)


def test_the_size_is_recorded_before_the_first_set_memory_and_kept_by_a_new_daemon(tmp_path: Path) -> None:
    record = UndoRecord(tmp_path / FILE_NAME)
    spy = _Spy(_sim(), record)
    hv = RecordingHypervisor(spy, record, URI)  # type: ignore[arg-type]
    hv.sample()
    (result,) = hv.apply([_reclaim("web", 1536, 1436)])
    assert result.ok and spy.seen_at_apply == [{"web": record.read()[URI]["web"]}]
    assert record.read()[URI]["web"].size_kib == 1536 * MIB
    assert record.read()[URI]["web"].max_kib == 2048 * MIB
    spy.real.advance(5)
    hv.sample()
    assert hv.apply([_reclaim("web", 1436, 1336)])[0].ok
    # A restarted daemon (a new adapter on the same file): the first size stays.
    again = RecordingHypervisor(spy, record, URI)  # type: ignore[arg-type]
    again.sample()
    assert again.apply([_reclaim("web", 1336, 1236), _reclaim("db", 1024, 924)])[0].ok
    assert {n: b.size_kib // MIB for n, b in record.read()[URI].items()} == {"web": 1536, "db": 1024}


def test_a_guest_restore_handed_back_is_recorded_afresh(tmp_path: Path) -> None:
    record = UndoRecord(tmp_path / FILE_NAME)
    sim = _sim()
    hv = RecordingHypervisor(sim, record, URI)
    hv.sample()
    hv.apply([_reclaim("web", 1536, 1436)])
    record.drop(URI, ["web"])  # what `memcoord restore` does once the guest is back
    sim.guests["web"].target_kib = sim.guests["web"].current_kib = mib_to_kib(1800)
    hv.sample()
    hv.apply([_reclaim("web", 1800, 1700)])
    assert record.read()[URI]["web"].size_kib == 1800 * MIB


def test_an_unrecordable_guest_is_not_changed_and_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / FILE_NAME
    record = UndoRecord(path)
    record.add(URI, {"web": Before(1536 * MIB, 2048 * MIB, 0.0)})
    sim = _sim()
    hv = RecordingHypervisor(sim, record, URI)
    hv.sample()
    assert hv.apply([_reclaim("web", 1536, 1436)])[0].ok  # read the record: web is in it
    text = path.read_text().replace('"hosts"', '"hostz"')
    path.write_text(text)  # broken by hand
    caplog.set_level(logging.INFO, logger="memcoord")
    for _ in range(3):
        hv.sample()
        web, db = hv.apply([_reclaim("web", 1436, 1336), _reclaim("db", 1024, 924)])
        # Which guests the broken file holds cannot be known: neither is changed.
        assert not web.ok and not db.ok
        assert db.error is not None and db.error.startswith(NOT_RECORDED) and str(path) in db.error
    assert sim.guests["db"].target_kib == mib_to_kib(1024) and sim.guests["web"].target_kib == mib_to_kib(1436)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0] and "not a memcoord size record" in errors[0], errors
    assert path.read_text() == text
    # Fixed: changes go through again, db recorded first.
    path.write_text(text.replace('"hostz"', '"hosts"'))
    hv.sample()
    assert all(r.ok for r in hv.apply([_reclaim("db", 1024, 924)]))
    assert record.read()[URI]["db"].size_kib == 1024 * MIB
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_a_record_that_cannot_be_written_stops_only_the_guests_not_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state directory fills up: a guest recorded before is still changed, tick after tick; one that is not
    recorded yet waits until the record can be written."""
    record = UndoRecord(tmp_path / FILE_NAME)
    sim = _sim()
    hv = RecordingHypervisor(sim, record, URI)
    hv.sample()
    assert hv.apply([_reclaim("web", 1536, 1436)])[0].ok

    def full(_hosts: object) -> None:
        raise RecordError(f"{record.path}: cannot write the record: No space left on device")

    monkeypatch.setattr(record, "_write", full)
    for from_mib in (1436, 1336):
        hv.sample()
        web, db = hv.apply([_reclaim("web", from_mib, from_mib - 100), _reclaim("db", 1024, 924)])
        assert web.ok, web
        assert not db.ok and db.error is not None and db.error.startswith(NOT_RECORDED)
    assert sim.guests["web"].target_kib == mib_to_kib(1236) and sim.guests["db"].target_kib == mib_to_kib(1024)


def test_the_daemon_logs_a_repeated_failure_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The policy asks again every tick; the same failure is one journal line, the metrics count each."""
    (tmp_path / FILE_NAME).write_text("garbage")
    sim = _sim()
    sim.ensure_stats_period(["web", "db"], 1)
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[status]\npath = "{tmp_path / "state.json"}"\n')
    record = UndoRecord(tmp_path / FILE_NAME)
    observer = Observer(publish=False)
    service = Service(cfg, parse(cfg.read_text()), lambda uri: RecordingHypervisor(sim, record, uri), observer=observer)
    caplog.set_level(logging.INFO, logger="memcoord")
    for _ in range(8):
        sim.advance(1.0)
        assert service.tick()
    failed = [r for r in caplog.records if r.getMessage().startswith("setMemory failed")]
    # One line per guest, though each failed on several ticks.
    assert sorted(r.MEMCOORD_DOMAIN for r in failed) == ["db", "web"]  # type: ignore[attr-defined]
    assert observer.errors_by_kind["set_memory"] > len(failed)
    assert sim.set_memory_calls == 0
    assert os.path.exists(tmp_path / FILE_NAME) and (tmp_path / FILE_NAME).read_text() == "garbage"


def test_the_record_file_reads_as_documented(tmp_path: Path) -> None:
    record = UndoRecord(tmp_path / FILE_NAME)
    record.add(URI, {"web": Before(1536 * MIB, 2048 * MIB, 12.5)})
    data = json.loads(record.path.read_text())
    assert data["version"] == 1 and "memcoord restore" in data["about"]
    assert data["hosts"] == {URI: {"web": {"size_kib": 1536 * MIB, "max_kib": 2048 * MIB, "recorded_at_s": 12.5}}}
