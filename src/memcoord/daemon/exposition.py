"""The Prometheus side of the metrics (see metrics.py): metric families built at scrape time from memcoord's
counts and its latest published view, the registry and the HTTP(S) endpoint. The only module that imports the
client library.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, generate_latest
from prometheus_client.utils import floatToGoString

from memcoord import __version__
from memcoord.core.config import MetricsConfig
from memcoord.daemon.metrics import Metrics

log = logging.getLogger("memcoord")

BYTES_PER_KIB = 1024

DOMAIN_GAUGES = (
    ("target", "target_kib", "Balloon target memcoord last set (absent until it sets one)"),
    ("current", "current_kib", "Current balloon size, as libvirt reports it"),
    ("max", "max_kib", "Maximum memory of the domain"),
    ("unused", "unused_kib", "Memory the guest reports unused"),
    ("usable", "usable_kib", "Memory the guest reports usable without swapping"),
    ("floor", "floor_kib", "Lowest target memcoord may set (guest.min_mib or the domain's min_mib); managed only"),
    ("ceiling", "ceiling_kib", "Highest target memcoord may set (the maximum, or the domain's max_mib); managed only"),
)
# The host's sizes: (metric, the view's host key, help). A key an older view lacks reads 0.
HOST_GAUGES = (
    ("memcoord_host_available_bytes", "available_kib", "Host memory available"),
    ("memcoord_host_total_bytes", "total_kib", "Host memory in total"),
    (
        "memcoord_host_guard_bytes",
        "guard_kib",
        "Host available memory growth may not go below ([host] min_available_mib)",
    ),
    (
        "memcoord_host_below_guard_bytes",
        "below_guard_kib",
        "How far host available memory is below the guard (0 when at or above it); relief works on it",
    ),
    (
        "memcoord_host_reserved_bytes",
        "reserved_kib",
        "Memory held above the guard for a VM about to start (memcoord make-room; 0: none)",
    ),
    (
        "memcoord_host_freeable_bytes",
        "freeable_kib",
        "What memcoord could give the host back now without taking any guest below its low line (balloons above "
        "their bands' low, as far as QEMU backs them)",
    ),
    (
        "memcoord_guest_floors_bytes",
        "floors_kib",
        "The managed guests' floors, summed: memory memcoord never takes back, whatever the host needs",
    ),
    (
        "memcoord_relief_shortfall_bytes",
        "relief_shortfall_kib",
        "Part of the host's deficit the guests' reclaimable memory could not cover this tick (0: none)",
    ),
)


class Endpoint:
    """The registry over one Metrics object (its counts, the gauges of its view, and the client library's process_*
    series: the daemon's own RSS, CPU and open files, what an alert on memcoord itself reads) and the HTTP(S) server
    that serves it; each Endpoint has its own registry, so tests can run several services in one process."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.registry = CollectorRegistry()
        self.registry.register(_CountsCollector(metrics))
        self.registry.register(_ViewCollector(metrics.get_view))
        ProcessCollector(registry=self.registry)
        self._server: Any = None
        self._bound: tuple[Any, ...] | None = None

    def serve(self, m: MetricsConfig) -> None:
        """Start (or move) the endpoint; a port already taken is logged, not fatal: balloons matter more.

        A reload restarts it when any setting changed, or when a certificate or key file did (renewed in place)."""
        address, port = m.bind
        files = (m.certfile, m.keyfile, m.client_cafile)
        bound = (address, port, m.client_auth_required, *files, *(_mtime(f) for f in files))
        if self._bound == bound:
            return
        self.shutdown()
        scheme = "https" if m.tls else "http"
        shown = f"[{address}]" if ":" in address else address
        try:
            tls = tls_context(m.certfile, m.keyfile, m.client_cafile, m.client_auth_required) if m.tls else None
            self._server = start_server(port, address, self.registry, tls)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a name that does not resolve too
            log.error("metrics endpoint not started on %s://%s:%d: %s", scheme, shown, port, exc)
            self.metrics.count_error("metrics")
            return
        self._bound = bound
        auth = ""
        if m.client_cafile:
            auth = ", client certificate required" if m.client_auth_required else ", client certificates verified"
        log.info("metrics on %s://%s:%d/metrics%s", scheme, shown, port, auth)
        exposed = m.plain_http_exposed()
        if exposed:
            log.warning("%s", exposed)

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._bound = None

    def text(self) -> bytes:
        """What a scrape returns, without HTTP (for tests and debugging)."""
        return generate_latest(self.registry)


def tls_context(certfile: str, keyfile: str, client_cafile: str, client_auth_required: bool) -> ssl.SSLContext:
    """The endpoint's TLS. With a client CA, every certificate a scraper presents is verified against it
    (CERT_OPTIONAL: one from another CA fails the handshake); client_auth_required also refuses a scraper that
    presents none (CERT_REQUIRED). prometheus_client's own TLS is not used: with client_auth_required false it
    asks for no certificate at all (CERT_NONE), and with the key inside certfile it serves plain HTTP."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile or None)
    if client_cafile:
        context.load_verify_locations(cafile=client_cafile)
        context.verify_mode = ssl.CERT_REQUIRED if client_auth_required else ssl.CERT_OPTIONAL
    return context


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_server(port: int, address: str, registry: CollectorRegistry, tls: ssl.SSLContext | None) -> Any:
    """The endpoint's HTTP(S) server, serving in a thread of its own; what shutdown() and server_close() stop.
    The socket is wrapped in TLS before the first connection is accepted."""
    family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(str(sockaddr[0]), port, make_wsgi_app(registry), Server, handler_class=_QuietHandler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


class _CountsCollector:
    """Counters and the tick-duration histogram, from the counts the observer keeps."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        c = self._metrics.counts()
        actions = CounterMetricFamily(
            "memcoord_actions",
            "Balloon changes decided (applied, or logged in dry run), by action and domain",
            labels=["domain", "action"],
        )
        for (domain, action), n in c.actions.items():
            actions.add_metric([domain, action], n)
        yield actions
        errors = CounterMetricFamily(
            "memcoord_errors",
            "Errors: hypervisor unreachable, setMemory or stats period failed, config reload failed, state file",
            labels=["kind"],
        )
        for kind, n in c.errors.items():
            errors.add_metric([kind], n)
        yield errors
        reloads = CounterMetricFamily("memcoord_config_reloads", "Config reloads by result", labels=["result"])
        for result, n in c.reloads.items():
            reloads.add_metric([result], n)
        yield reloads
        yield CounterMetricFamily("memcoord_ticks", "Ticks that reached the hypervisor", value=c.ticks)
        cumulative, buckets = 0, []
        for bound_s, n in zip((*c.tick_bounds_s, float("inf")), c.tick_bucket_counts, strict=True):
            cumulative += n
            buckets.append((floatToGoString(bound_s), cumulative))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(
            "memcoord_tick_duration_seconds",
            "Time to sample, decide and apply one tick",
            buckets=buckets,
            sum_value=c.tick_sum_s,
        )
        starving = CounterMetricFamily(
            "memcoord_domain_starving_seconds",
            "Time the domain spent classed starving (created at 0 for every managed domain)",
            labels=["domain"],
        )
        for domain, seconds in c.starving_s.items():
            starving.add_metric([domain], seconds)
        yield starving
        build_info = GaugeMetricFamily("memcoord_build_info", "memcoord's version; always 1", labels=["version"])
        build_info.add_metric([__version__], 1)
        yield build_info
        yield GaugeMetricFamily(
            "memcoord_config_last_reload_successful",
            "1 when the last config load (start or reload) worked; 0 while the daemon runs an older config",
            value=c.reload_ok,
        )
        yield GaugeMetricFamily(
            "memcoord_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (epoch)",
            value=c.reload_ok_at_s,
        )
        yield GaugeMetricFamily(
            "memcoord_config_hash",
            "First 48 bits of the running effective config's SHA-256: equal on hosts with equal settings",
            value=c.config_hash,
        )


class _ViewCollector:
    """Gauges from the latest view: per-domain sizes, host memory and guard, guest classes."""

    def __init__(self, get_view: Callable[[], dict[str, Any] | None]) -> None:
        self._get_view = get_view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self._get_view()
        if view is None:
            return
        for name, key, doc in DOMAIN_GAUGES:
            family = GaugeMetricFamily(f"memcoord_domain_{name}_bytes", doc, labels=["domain"])
            for dom in view["domains"]:
                if dom.get(key) is not None:
                    family.add_metric([dom["name"]], dom[key] * BYTES_PER_KIB)
            yield family
        failing = GaugeMetricFamily(
            "memcoord_domain_stats_period_failing",
            "1 while the domain's balloon stats period could not be set and is being retried (no fresh stats)",
            labels=["domain"],
        )
        for name in view.get("stats_period_failing", {}):
            failing.add_metric([name], 1)
        yield failing
        classes = GaugeMetricFamily(
            "memcoord_domain_class", "1 for the class the policy gave the domain this tick", labels=["domain", "class"]
        )
        for dom in view["domains"]:
            classes.add_metric([dom["name"], dom["class"]], 1)
        yield classes
        host = view["host"]
        if host is not None:
            for name, key, doc in HOST_GAUGES:
                yield GaugeMetricFamily(name, doc, value=host.get(key, 0) * BYTES_PER_KIB)
            if host.get("pressure_some_avg10") is not None:
                yield GaugeMetricFamily(
                    "memcoord_host_memory_pressure_ratio",
                    "Share of the last 10 s some task on the host waited for memory (PSI memory some avg10)",
                    value=host["pressure_some_avg10"] / 100,
                )
        yield GaugeMetricFamily(
            "memcoord_hypervisor_up", "1 when the last tick reached the hypervisor", value=int(view["hypervisor_ok"])
        )
        yield GaugeMetricFamily("memcoord_dry_run", "1 when actions are only logged", value=int(view["dry_run"]))
        yield GaugeMetricFamily(
            "memcoord_tick_interval_seconds",
            "Configured time between ticks ([loop] interval_s)",
            value=view["interval_s"],
        )
        yield GaugeMetricFamily(
            "memcoord_last_tick_timestamp_seconds", "When the last tick finished", value=view["updated_at_s"]
        )
        yield GaugeMetricFamily(
            "memcoord_start_time_seconds", "When the daemon started (epoch)", value=view["started_at_s"]
        )
