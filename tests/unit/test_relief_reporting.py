"""Host-pressure relief as an admin sees it: journal, STATUS, `memcoord status` and metrics, on the simulator."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from memcoord.admin.status import render
from memcoord.core.config import parse
from memcoord.core.model import mib_to_kib
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import Service
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import Idle


class RecordingNotifier:
    def __init__(self) -> None:
        self.statuses: list[str] = []

    def status(self, text: str) -> None:
        self.statuses.append(text)

    def __getattr__(self, _name: str):  # READY, WATCHDOG, ...: not what this test looks at
        return lambda *a, **k: None


def _gauge(service: Service, name: str) -> float:
    text = service.observer.endpoint.text().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} not scraped")


def _host(other_used_mib: int) -> SimulatedHypervisor:
    """Two 2 GiB guests holding 1.5 GiB of touched-and-freed memory each, on an 8 GiB host."""
    guests = [
        SimGuest(f"g{i}", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(2048), workload=Idle(mib_to_kib(300)))
        for i in range(2)
    ]
    sim = SimulatedHypervisor(guests, host_total_kib=mib_to_kib(8192), host_other_used_kib=mib_to_kib(other_used_mib))
    for g in sim.guests.values():
        g.rss_kib = g.current_kib  # they touched all of it once
    return sim


def _service(tmp_path: Path, sim: SimulatedHypervisor, guard_mib: int) -> tuple[Service, RecordingNotifier]:
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[host]\nmin_available_mib = {guard_mib}\n[status]\npath = "{tmp_path / "state.json"}"\n')
    notifier = RecordingNotifier()
    service = Service(
        cfg, parse(cfg.read_text()), lambda _uri: sim, notifier=notifier, observer=Observer(publish=False)
    )
    return service, notifier


def test_relief_brings_the_host_back_above_its_guard_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="memcoord")
    sim = _host(other_used_mib=1024)
    service, notifier = _service(tmp_path, sim, guard_mib=4500)  # available 8192 - 1024 - 4096 = 3072 MiB
    service.tick()
    assert "BELOW GUARD by 1428 MiB, relieving" in notifier.statuses[-1]
    assert not [r for r in caplog.records if "guests hold only part" in r.getMessage()], "warned before any stats"
    assert _gauge(service, "memcoord_host_below_guard_bytes") == mib_to_kib(1428) * 1024
    assert any("HOST BELOW ITS GUARD" in line for line in render(service.observer.view))
    for _ in range(12):
        sim.advance(1.0)
        service.tick()
    assert sim.host_available_kib() >= mib_to_kib(4500)
    assert _gauge(service, "memcoord_host_below_guard_bytes") == 0
    relieved = [r for r in caplog.records if r.getMessage().startswith("relieve ")]
    assert relieved, "no relieve action was logged"
    assert "BELOW GUARD" not in notifier.statuses[-1]


def test_relief_that_cannot_restore_the_guard_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="memcoord")
    sim = _host(other_used_mib=5000)  # available 8192 - 5000 - 4096 = -> 0: far more than the guests hold
    service, notifier = _service(tmp_path, sim, guard_mib=4000)
    for _ in range(10):
        service.tick()
        sim.advance(1.0)
    warnings = [r for r in caplog.records if "below its guard and the guests hold only part" in r.getMessage()]
    assert len(warnings) == 1
    assert _gauge(service, "memcoord_relief_shortfall_bytes") > 0
    assert "guests can give back" in notifier.statuses[-1]
    sim.host_other_used_kib = 0
    for _ in range(3):
        sim.advance(1.0)
        service.tick()
    assert any(r.getMessage() == "host back above its guard" for r in caplog.records)
