"""The shipped Prometheus files on a real Prometheus: Debian's `prometheus` binary scraping a real `memcoord run`.

The daemon runs on a simulated host of 100 guests (a scenario file behind a sim: URI) with TLS and client
certificates on; Prometheus uses the shipped scrape config (targets and file paths swapped for the test's), the
shipped rules and the shipped dashboard's queries. One guest, `starver`, is held at a 512 MiB ceiling while its
program wants 460 MiB, so it starves until a config reload raises the ceiling. The 99 idle guests start about 90 MiB
above their wasteful line, so memcoord reclaims each (the dashboard's actions panel has something to show).

Not skipped without the binary: CI installs the prometheus package (Makefile DEBS), and a skip would hide that.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.daemon import Daemon, free_port, wait_for
from tests.helpers.tlskit import make_pki

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "packaging" / "prometheus"
DOMAINS = 100

SCENARIO = """
name = "prometheus-100"
duration_s = 3600
[host]
total_mib = 65536
[[guests]]
name = "starver"
max_mib = 2048
start_mib = 512
workload = { kind = "grow", rate_mib_per_s = 100, limit_mib = 400 }
[[guests]]
name = "idle"
count = 99
max_mib = 1024
start_mib = 600
workload = { kind = "idle", used_mib = 100 }
"""


def metrics_config(port: int, pki: Any, starver_max_mib: int) -> str:
    return (
        f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\ncertfile = "{pki.server_cert}"\n'
        f'keyfile = "{pki.server_key}"\nclient_cafile = "{pki.ca}"\nclient_auth_required = true\n'
        f"[domains.starver]\nmax_mib = {starver_max_mib}\n"
    )


def shortened_rules(tmp: Path) -> Path:
    """The shipped rules with MemcoordGuestStarving scaled down from 5 minutes to about 13 s: the test cannot
    starve a guest for 5 minutes. Its `for: 4m` becomes 3 s and its rate window 1 m becomes 10 s (rate() divides
    by the whole window, so over 1 m a guest starving for 12 s reads 0.2: it needs ~50 s of data before it
    passes 0.8). The comparison (> 0.8 of the time) and everything else are the shipped rule's."""
    rules = yaml.safe_load((SHIPPED / "memcoord.rules.yml").read_text())
    starving = [r for r in rules["groups"][0]["rules"] if r.get("alert") == "MemcoordGuestStarving"]
    assert len(starving) == 1, "MemcoordGuestStarving is not in the shipped rules' first group: rescale it here"
    for rule in starving:
        assert rule["for"] == "4m" and "[1m]" in rule["expr"], "the shipped rule changed: rescale it here"
        rule["for"] = "3s"
        rule["expr"] = rule["expr"].replace("[1m]", "[10s]")
    path = tmp / "memcoord.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def prometheus_config(tmp: Path, target_port: int, pki: Any) -> Path:
    """The shipped scrape config, pointed at the test's daemon, certificates and rules, scraping every second."""
    config = yaml.safe_load((SHIPPED / "scrape-config.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(shortened_rules(tmp))]
    job = config["scrape_configs"][0]
    job["scrape_interval"] = "1s"
    job["tls_config"] = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
    job["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    def __init__(self, tmp: Path, config: Path) -> None:
        exe = shutil.which("prometheus")
        assert exe, "prometheus not found: install Debian's prometheus package (make deps)"
        self.port = free_port()
        self.log_path = tmp / "prometheus.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited:\n{self.log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def starving_alerts(self) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == "MemcoordGuestStarving"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the shipped dashboard, its variables set as Grafana would for "All"."""
    dashboard = json.loads((SHIPPED / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    return [e.replace("$instance", ".*").replace("$domain", ".*").replace("$__rate_interval", "10s") for e in exprs]


@pytest.fixture
def stack(tmp_path: Path):
    pki = make_pki(tmp_path / "pki")
    scenario = tmp_path / "hundred.toml"
    scenario.write_text(SCENARIO)
    port = free_port()
    daemon = Daemon(tmp_path, interval_s=0.5, extra=metrics_config(port, pki, 512), uri=f"sim://{scenario}")
    prometheus = None
    try:
        daemon.wait_ticks(2)
        prometheus = Prometheus(tmp_path, prometheus_config(tmp_path, port, pki))
        wait_for(prometheus.ready, timeout_s=30)
        yield daemon, prometheus, port
    finally:
        if prometheus is not None:
            prometheus.stop()
        assert daemon.stop() == 0, daemon.log()


def test_prometheus_scrapes_alerts_and_resolves(stack):
    daemon, prometheus, port = stack
    started_s = time.monotonic()

    # The target is up, over TLS with a client certificate.
    def target_up() -> dict[str, Any] | None:
        targets = prometheus.api("targets")["activeTargets"]  # empty until the first scrape is scheduled
        assert len(targets) <= 1
        return targets[0] if targets and targets[0]["health"] == "up" else None

    target = wait_for(target_up, timeout_s=30)
    assert target["scrapeUrl"] == f"https://127.0.0.1:{port}/metrics"
    assert target["labels"]["instance"] == "127.0.0.1" and target["labels"]["job"] == "memcoord"
    assert len(prometheus.query("memcoord_domain_current_bytes")) == DOMAINS

    # The starving guest's alert fires, for it alone.
    def firing() -> list[dict[str, Any]]:
        return [a for a in prometheus.starving_alerts() if a["state"] == "firing"]

    alerts = wait_for(firing, timeout_s=40, every_s=0.5)
    assert [a["labels"]["domain"] for a in alerts] == ["starver"]
    assert "max_mib" in alerts[0]["annotations"]["runbook"]
    fired_s = time.monotonic() - started_s

    # Every dashboard query returns series (rates need two scrapes in their window: wait for them).
    queries = dashboard_queries()
    wait_for(lambda: all(prometheus.query(q) for q in queries), timeout_s=20, every_s=1)
    empty = [q for q in queries if not prometheus.query(q)]
    assert not empty, empty
    assert prometheus.value('memcoord_domain_ceiling_bytes{domain="starver"}') == 512 * 1024 * 1024
    assert prometheus.value("memcoord_config_last_reload_successful") == 1
    hash_before = prometheus.value("memcoord_config_hash")

    # Scrape cost for 100 domains, as Prometheus measured it.
    duration_s = prometheus.value('scrape_duration_seconds{job="memcoord"}')
    samples = prometheus.value('scrape_samples_scraped{job="memcoord"}')
    print(f"\n{DOMAINS} domains over TLS: scrape {duration_s * 1000:.1f} ms, {samples:.0f} samples (series)")
    assert duration_s < 1.0

    # Feed it: the fleet roll-out in small, a new config, check-config, reload, then watch the reload gauge.
    text = daemon.config_path.read_text().replace("max_mib = 512", "max_mib = 2048")
    daemon.config_path.write_text(text)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: prometheus.value("memcoord_config_hash") != hash_before, timeout_s=15)
    assert prometheus.value("memcoord_config_last_reload_successful") == 1
    wait_for(lambda: not prometheus.starving_alerts(), timeout_s=60, every_s=1)
    assert prometheus.value('memcoord_domain_ceiling_bytes{domain="starver"}') == 2048 * 1024 * 1024
    assert not prometheus.query('memcoord_domain_class{domain="starver", class="starving"}')
    # A healthy host on real data: none of the shipped alerts is pending or firing.
    assert prometheus.api("alerts")["alerts"] == []
    print(f"starving alert fired after {fired_s:.0f} s, resolved {time.monotonic() - started_s - fired_s:.0f} s later")
