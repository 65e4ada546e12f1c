"""Prometheus metrics: scraped over HTTP from a running memcoord and parsed with the client library's parser."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from memcoord.config import parse
from memcoord.hypervisor.sim import demo_host
from memcoord.metrics import ERROR_KINDS
from memcoord.observe import Observer
from memcoord.service import Service
from tests.unit.obs_daemon import SIM_GUESTS, Daemon, free_port, wait_for


def samples(text: str) -> dict[str, list[Sample]]:
    """Every sample, by sample name (counters appear as *_total, histograms as *_bucket/_sum/_count)."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def by_domain(found: dict[str, list[Sample]], name: str) -> dict[str, float]:
    return {s.labels["domain"]: s.value for s in found.get(name, [])}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_gauges_and_counters_follow_the_ticks(tmp_path: Path):
    sim = demo_host()
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[status]\npath = "{tmp_path / "state.json"}"\n')
    service = Service(cfg, parse(cfg.read_text()), lambda _uri: sim, observer=Observer(publish=False))
    for _ in range(20):
        sim.advance(1.0)
        service.tick()
    found = samples(service.observer.metrics.exposition().decode())
    seen = sim.sample()
    assert by_domain(found, "memcoord_domain_actual_bytes") == {d.name: d.current_kib * 1024 for d in seen.domains}
    assert by_domain(found, "memcoord_domain_unused_bytes") == {d.name: d.unused_kib * 1024 for d in seen.domains}
    assert by_domain(found, "memcoord_domain_max_bytes") == {d.name: d.max_kib * 1024 for d in seen.domains}
    targets = by_domain(found, "memcoord_domain_target_bytes")
    assert targets and all(targets[name] == sim.guests[name].target_kib * 1024 for name in targets)
    assert found["memcoord_host_available_bytes"][0].value == seen.host.available_kib * 1024
    actions = {(s.labels["domain"], s.labels["action"]): s.value for s in found["memcoord_actions_total"]}
    assert actions[("sim-idle", "reclaim")] >= 5
    assert found["memcoord_ticks_total"][0].value == 20
    assert next(s for s in found["memcoord_tick_duration_seconds_count"]).value == 20
    classes = {s.labels["domain"] for s in found["memcoord_domain_class"] if s.value == 1}
    assert classes == SIM_GUESTS

    # Failures: an unreachable hypervisor, a broken config on reload.
    sim.reachable = False
    service.tick()
    cfg.write_text("[guest]\nwasteful_mib = 10\n")
    service.reload()
    cfg.write_text("")
    service.reload()
    found = samples(service.observer.metrics.exposition().decode())
    errors = {s.labels["kind"]: s.value for s in found["memcoord_errors_total"]}
    # Every kind is there from the start (at 0), so rate() and increase() see the first error of each.
    assert set(errors) == set(ERROR_KINDS)
    assert {kind: n for kind, n in errors.items() if n} == {"hypervisor": 1.0, "reload": 1.0}
    reloads = {s.labels["result"]: s.value for s in found["memcoord_config_reloads_total"]}
    assert reloads == {"success": 1.0, "failure": 1.0}
    assert found["memcoord_hypervisor_up"][0].value == 0


def test_a_stopped_domain_leaves_the_scrape(tmp_path: Path):
    sim = demo_host()
    service = Service(tmp_path / "none.toml", parse(""), lambda _uri: sim)
    sim.advance(1.0)
    service.tick()
    del sim.guests["sim-busy"]
    sim.advance(1.0)
    service.tick()
    found = samples(service.observer.metrics.exposition().decode())
    assert set(by_domain(found, "memcoord_domain_actual_bytes")) == {"sim-hog", "sim-idle"}


def test_endpoint_of_a_running_daemon(tmp_path: Path):
    port = free_port()
    daemon = Daemon(tmp_path, extra=f"[metrics]\nenabled = true\nport = {port}\n")
    try:
        daemon.wait_ticks(15)
        text = wait_for(lambda: scrape(port))
        view = daemon.view()
        found = samples(text)
        for name in (
            "memcoord_domain_target_bytes",
            "memcoord_domain_actual_bytes",
            "memcoord_domain_unused_bytes",
            "memcoord_domain_usable_bytes",
            "memcoord_actions_total",
            "memcoord_host_available_bytes",
            "memcoord_tick_duration_seconds_bucket",
            "memcoord_config_reloads_total",
        ):
            assert name in found, name
        assert set(by_domain(found, "memcoord_domain_actual_bytes")) == SIM_GUESTS
        # Scrape and state file come from the same view; they agree on the guests' maxima exactly.
        assert by_domain(found, "memcoord_domain_max_bytes") == {
            d["name"]: d["max_kib"] * 1024 for d in view["domains"]
        }
        assert found["memcoord_ticks_total"][0].value >= 15
        # SIGHUP counts a successful reload on the same endpoint (the server is not restarted).
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: any(
                s.labels["result"] == "success" and s.value == 1
                for s in samples(scrape(port))["memcoord_config_reloads_total"]
            )
        )
    finally:
        assert daemon.stop() == 0
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_metrics_are_off_by_default(tmp_path: Path):
    port = free_port()
    daemon = Daemon(tmp_path, extra=f"[metrics]\nport = {port}\n")
    try:
        view = daemon.wait_ticks(3)
        assert json.loads(daemon.state_path.read_text())["ticks"] >= view["ticks"]
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        daemon.stop()
