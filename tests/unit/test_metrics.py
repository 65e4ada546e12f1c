"""Prometheus metrics: scraped over HTTP from a running memcoord and parsed with the client library's parser."""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.error
from pathlib import Path

import pytest

import memcoord
from memcoord.core.config import ConfigError, parse
from memcoord.core.model import mib_to_kib
from memcoord.daemon.exposition import Endpoint
from memcoord.daemon.metrics import ERROR_KINDS, Metrics, config_hash
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import Service
from memcoord.sim.host import demo_host
from memcoord.sim.workloads import Hog
from tests.helpers.daemon import SIM_GUESTS, free_port, wait_for
from tests.helpers.scrape import by_domain, samples, scrape, scrape_tls
from tests.helpers.tlskit import make_pki

MIB = 1024 * 1024


def test_gauges_and_counters_follow_the_ticks(tmp_path: Path):
    sim = demo_host()
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[status]\npath = "{tmp_path / "state.json"}"\n')
    service = Service(cfg, parse(cfg.read_text()), lambda _uri: sim, observer=Observer(publish=False))
    for _ in range(20):
        sim.advance(1.0)
        service.tick()
    found = samples(service.observer.endpoint.text().decode())
    seen = sim.sample()
    assert by_domain(found, "memcoord_domain_current_bytes") == {d.name: d.current_kib * 1024 for d in seen.domains}
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
    found = samples(service.observer.endpoint.text().decode())
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
    found = samples(service.observer.endpoint.text().decode())
    assert set(by_domain(found, "memcoord_domain_current_bytes")) == {"sim-hog", "sim-idle"}


def test_operator_series_floor_ceiling_reload_and_hash(tmp_path: Path):
    """build_info, reload state and config hash, floor and ceiling per managed domain, starving seconds; no _created."""
    sim = demo_host()
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text("[domains.sim-idle]\nmin_mib = 300\nmax_mib = 1500\n[domains.sim-busy]\nenabled = false\n")
    service = Service(cfg, parse(cfg.read_text()), lambda _uri: sim, observer=Observer(publish=False))
    for _ in range(5):
        sim.advance(1.0)
        service.tick()
    text = service.observer.endpoint.text().decode()
    found = samples(text)
    assert "_created" not in text
    assert [s.labels for s in found["memcoord_build_info"]] == [{"version": memcoord.__version__}]
    assert by_domain(found, "memcoord_domain_floor_bytes") == {"sim-idle": 300 * MIB, "sim-hog": 256 * MIB}
    assert by_domain(found, "memcoord_domain_ceiling_bytes") == {"sim-idle": 1500 * MIB, "sim-hog": 2048 * MIB}
    assert set(by_domain(found, "memcoord_domain_starving_seconds_total")) == {"sim-idle", "sim-hog"}
    assert found["memcoord_config_last_reload_successful"][0].value == 1
    loaded_at = found["memcoord_config_last_reload_success_timestamp_seconds"][0].value
    assert abs(loaded_at - time.time()) < 60
    first_hash = found["memcoord_config_hash"][0].value
    assert first_hash == config_hash(service.config) and 0 < first_hash < 2**48
    assert found["memcoord_dry_run"][0].value == 0
    assert found["memcoord_tick_interval_seconds"][0].value == 1.0
    assert found["memcoord_host_guard_bytes"][0].value == 1024 * MIB

    # A broken file: the old config runs on, the gauge says so, the hash and timestamp stay.
    cfg.write_text("[guest]\nwasteful_mib = 10\n")
    service.reload()
    found = samples(service.observer.endpoint.text().decode())
    assert found["memcoord_config_last_reload_successful"][0].value == 0
    assert found["memcoord_config_hash"][0].value == first_hash
    assert found["memcoord_config_last_reload_success_timestamp_seconds"][0].value == loaded_at
    # A good one with other settings: back to 1, a new hash; comments and key order do not change a hash.
    cfg.write_text("[loop]\ndry_run = true\n")
    service.reload()
    found = samples(service.observer.endpoint.text().decode())
    assert found["memcoord_config_last_reload_successful"][0].value == 1
    assert found["memcoord_config_hash"][0].value != first_hash
    assert found["memcoord_dry_run"][0].value == 1
    assert (
        config_hash(parse("# x\n[loop]\ndry_run = true\ninterval_s = 1.0\n")) == found["memcoord_config_hash"][0].value
    )


def test_process_series_are_the_daemons_own(tmp_path: Path):
    """process_* (the client library's process collector) describe this process: its RSS and start time."""
    import psutil

    cfg = tmp_path / "memcoord.toml"
    cfg.write_text("")
    service = Service(cfg, parse(""), lambda _uri: demo_host(), observer=Observer(publish=False))
    service.tick()
    found = samples(service.observer.endpoint.text().decode())
    me = psutil.Process()
    rss = found["process_resident_memory_bytes"][0].value
    assert 0.5 * me.memory_info().rss < rss < 2 * me.memory_info().rss, (rss, me.memory_info().rss)
    assert abs(found["process_start_time_seconds"][0].value - me.create_time()) < 2
    assert found["process_cpu_seconds_total"][0].value > 0
    assert found["process_open_fds"][0].value > 0


def test_starving_seconds_count_the_time_a_guest_starves(tmp_path: Path):
    """A guest held at a 512 MiB ceiling while its program wants 460 MiB stays starving; the others never do."""
    sim = demo_host()
    sim.guests["sim-busy"].workload = Hog(rate_kib_per_s=mib_to_kib(100), limit_kib=mib_to_kib(400))
    cfg = parse("[domains.sim-busy]\nmax_mib = 512\n")
    service = Service(tmp_path / "m.toml", cfg, lambda _uri: sim, observer=Observer(publish=False))
    for _ in range(30):
        sim.advance(1.0)
        service.tick()
    starving = by_domain(samples(service.observer.endpoint.text().decode()), "memcoord_domain_starving_seconds_total")
    assert starving["sim-idle"] == 0
    assert starving["sim-hog"] <= 3, "a guest memcoord grows as it needs is starving a tick or two at most"
    # Held at its ceiling from the first ticks to the last: about one second per tick, never more than the 29 s
    # between the first tick and the last (time is the snapshots' clock).
    assert 20 <= starving["sim-busy"] <= 29


# What a TLS client sees when the server refuses its certificate (or its lack of one): under TLS 1.3 the alert
# may come only with the response, as a reset or an SSL error on read.
REFUSED = (ssl.SSLError, ConnectionError, urllib.error.URLError, http.client.HTTPException)


@pytest.mark.parametrize("required", [True, False], ids=["client_auth_required", "client_auth_optional"])
def test_a_client_ca_verifies_every_certificate_presented(tmp_path: Path, required: bool):
    """client_cafile set: a scraper's certificate from that CA is served, one from another CA is refused, for
    both settings; without a certificate, client_auth_required decides."""
    pki, foreign = make_pki(tmp_path / "pki"), make_pki(tmp_path / "foreign")
    port = free_port()
    config = parse(
        f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\ncertfile = "{pki.server_cert}"\n'
        f'keyfile = "{pki.server_key}"\nclient_cafile = "{pki.ca}"\n'
        f"client_auth_required = {str(required).lower()}\n"
    )
    endpoint = Endpoint(Metrics(lambda: None))
    endpoint.serve(config.metrics)
    try:
        assert "memcoord_build_info" in wait_for(lambda: scrape_tls(port, pki.ca, (pki.client_cert, pki.client_key)))
        with pytest.raises(REFUSED):
            scrape_tls(port, pki.ca, (foreign.client_cert, foreign.client_key))
        if required:
            with pytest.raises(REFUSED):
                scrape_tls(port, pki.ca, None)
        else:
            assert "memcoord_build_info" in scrape_tls(port, pki.ca, None)
        # The endpoint still serves a good scraper after refusing the others.
        assert "memcoord_build_info" in scrape_tls(port, pki.ca, (pki.client_cert, pki.client_key))
    finally:
        endpoint.shutdown()


def test_a_certfile_holding_its_key_serves_tls_not_plain_http(tmp_path: Path):
    """certfile may hold the key too (keyfile left empty): the endpoint must still be HTTPS."""
    pki = make_pki(tmp_path / "pki")
    both = tmp_path / "server-and-key.pem"
    both.write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())
    port = free_port()
    config = parse(f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\ncertfile = "{both}"\n')
    endpoint = Endpoint(Metrics(lambda: None))
    endpoint.serve(config.metrics)
    try:
        assert "memcoord_build_info" in wait_for(lambda: scrape_tls(port, pki.ca, None))
        with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException)):
            scrape(port)
    finally:
        endpoint.shutdown()


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ('listen = "0.0.0.0"', r"metrics.listen = '0.0.0.0': must be \"ADDRESS:PORT\""),
        ('listen = "::1:9749"', r"metrics.listen = '::1:9749': an IPv6 address needs brackets"),
        ('listen = "10.0.0.1:99999"', r"metrics.listen = '10.0.0.1:99999': the port must be a number"),
        ('listen = "bad host:9749"', r"metrics.listen = 'bad host:9749': not an IP address or host name"),
        ('listen = "[::]:9749"\nport = 9000', r"metrics.port = 9000: set metrics.listen or metrics.address/port"),
        ('certfile = "/nonexistent/cert.pem"', r"metrics.certfile = '/nonexistent/cert.pem': no such file"),
        ("client_auth_required = true", r"metrics.client_auth_required = True: needs metrics.certfile"),
        ('certfile = "{pki.server_cert}"\nkeyfile = "{pki.client_key}"', r"metrics.keyfile = '.*client.key': does not"),
        ('certfile = "{pki.server_cert}"\nkeyfile = "{pki.server_key}"\nclient_auth_required = true', "client_cafile"),
    ],
)
def test_bad_listen_and_tls_settings_name_the_key(tmp_path: Path, metrics: str, message: str):
    pki = make_pki(tmp_path)
    with pytest.raises(ConfigError, match=message):
        parse("[metrics]\n" + metrics.format(pki=pki), "memcoord.toml")


def test_listen_forms():
    assert parse('[metrics]\nlisten = "[::]:9100"\n').metrics.bind == ("::", 9100)
    assert parse('[metrics]\nlisten = "host-1.example:9749"\n').metrics.bind == ("host-1.example", 9749)
    assert parse("[metrics]\nport = 9100\n").metrics.bind == ("127.0.0.1", 9100)
    assert parse("").metrics.bind == ("127.0.0.1", 9749)
