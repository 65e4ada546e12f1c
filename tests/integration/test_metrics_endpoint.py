"""The Prometheus endpoint of a running `memcoord run` (on the simulated host): served, off by default, TLS."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from memcoord.core.config import parse
from tests.helpers.cli import memcoord
from tests.helpers.daemon import SIM_GUESTS, Daemon, free_port, wait_for
from tests.helpers.scrape import by_domain, samples, scrape, scrape_tls
from tests.helpers.tlskit import make_pki


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
            "memcoord_domain_current_bytes",
            "memcoord_domain_unused_bytes",
            "memcoord_domain_usable_bytes",
            "memcoord_actions_total",
            "memcoord_host_available_bytes",
            "memcoord_tick_duration_seconds_bucket",
            "memcoord_config_reloads_total",
        ):
            assert name in found, name
        assert set(by_domain(found, "memcoord_domain_current_bytes")) == SIM_GUESTS
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


def test_tls_endpoint_with_client_certificates(tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    daemon = Daemon(
        tmp_path,
        extra=f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\ncertfile = "{pki.server_cert}"\n'
        f'keyfile = "{pki.server_key}"\nclient_cafile = "{pki.ca}"\nclient_auth_required = true\n',
    )
    try:
        daemon.wait_ticks(3)
        text = wait_for(lambda: scrape_tls(port, pki.ca, (pki.client_cert, pki.client_key)))
        assert "memcoord_build_info" in text and "memcoord_domain_floor_bytes" in text
        # No client certificate: the handshake is refused. Plain HTTP gets no metrics either.
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            scrape_tls(port, pki.ca, None)
        with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException)):
            scrape(port)
        assert f"metrics on https://127.0.0.1:{port}/metrics, client certificate required" in daemon.log()
    finally:
        assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("metrics", "warning"),
    [
        ('listen = "0.0.0.0:9749"', "metrics.listen = '0.0.0.0:9749': the metrics endpoint serves plain HTTP"),
        ('listen = "[::]:9749"', "metrics.listen = '[::]:9749'"),
        ('listen = "metrics.example:9749"', "metrics.listen = 'metrics.example:9749'"),
        ('address = "10.1.2.3"', "metrics.address = '10.1.2.3'"),
        ('listen = "127.0.0.1:9749"', None),
        ('listen = "127.0.0.53:9749"', None),
        ('listen = "[::1]:9749"', None),
        ('listen = "localhost:9749"', None),
        ('listen = "0.0.0.0:9749"\ncertfile = "{pki.server_cert}"\nkeyfile = "{pki.server_key}"', None),
        ('listen = "0.0.0.0:9749"\nenabled = false', None),
    ],
)
def test_a_plain_http_endpoint_on_a_routable_address_is_warned_about_naming_the_key(
    tmp_path: Path, metrics: str, warning: str | None
):
    pki = make_pki(tmp_path / "pki")
    body = "[metrics]\n" + metrics.format(pki=pki)
    if "enabled" not in body:
        body += "\nenabled = true"
    config_path = tmp_path / "memcoord.toml"
    config_path.write_text(body + "\n")
    exposed = parse(config_path.read_text()).metrics.plain_http_exposed()
    proc = memcoord("check-config", "--offline", str(config_path))
    assert proc.returncode == 0, proc.stderr
    if warning is None:
        assert exposed is None and "warning" not in proc.stderr, (exposed, proc.stderr)
    else:
        assert exposed is not None and warning in exposed, exposed
        assert f"{config_path}: warning: {warning}" in proc.stderr, proc.stderr


def test_the_start_up_log_warns_of_a_plain_http_endpoint_on_a_routable_address(tmp_path: Path):
    port = free_port()
    daemon = Daemon(tmp_path, extra=f'[metrics]\nenabled = true\nlisten = "0.0.0.0:{port}"\n')
    try:
        daemon.wait_ticks(1)
        assert "memcoord_build_info" in wait_for(lambda: scrape(port))
    finally:
        assert daemon.stop() == 0
    assert f"metrics.listen = '0.0.0.0:{port}': the metrics endpoint serves plain HTTP" in daemon.log(), daemon.log()
