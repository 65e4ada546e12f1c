"""Prometheus metrics, with the standard client library: one memcoord per host, Prometheus aggregates the fleet.

Per-domain sizes are gauges collected from the latest published view at scrape time (a custom collector),
so a domain that stops or is undefined disappears from the scrape instead of freezing at its last value.
Events (actions, errors, reloads, tick durations) are ordinary counters and a histogram, updated by the
observer. The registry is private to each Metrics object so tests can run several services in one process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.registry import Collector

from . import __version__

if TYPE_CHECKING:
    from .config import Config, MetricsConfig

log = logging.getLogger("memcoord")

# Counters would each get a *_created twin holding the process start time: a duplicate series per counter (and
# per domain) that memcoord_start_time_seconds already says once. Process-wide, as the client library has it.
disable_created_metrics()

# Every kind of error, created at 0 so that increase() and rate() see the first one (a series that starts at 1
# has no earlier sample to rise from).
ERROR_KINDS = ("hypervisor", "set_memory", "stats_period", "reload", "state_file", "timeline", "metrics")

BYTES_PER_KIB = 1024
# Ticks are one bulk stats call and a few setMemory calls: milliseconds normally, seconds when libvirt is slow.
TICK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

DOMAIN_GAUGES = (
    ("target", "target_kib", "Balloon target memcoord last set (absent until it sets one)"),
    ("current", "current_kib", "Current balloon size, as libvirt reports it"),
    ("max", "max_kib", "Maximum memory of the domain"),
    ("unused", "unused_kib", "Memory the guest reports unused"),
    ("usable", "usable_kib", "Memory the guest reports usable without swapping"),
    ("floor", "floor_kib", "Lowest target memcoord may set (guest.min_mib or the domain's min_mib); managed only"),
    ("ceiling", "ceiling_kib", "Highest target memcoord may set (the maximum, or the domain's max_mib); managed only"),
)


def config_hash(config: Config) -> int:
    """The effective config's SHA-256, first 48 bits: exact in a float64 sample, and the same on every host
    running the same settings (comments, key order and defaults written out or not make no difference)."""
    canonical = json.dumps(config.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return int(hashlib.sha256(canonical.encode()).hexdigest()[:12], 16)


class _ViewCollector(Collector):
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
            yield GaugeMetricFamily(
                "memcoord_host_available_bytes", "Host memory available", value=host["available_kib"] * BYTES_PER_KIB
            )
            yield GaugeMetricFamily(
                "memcoord_host_guard_bytes",
                "Host available memory growth may not go below ([host] min_available_mib)",
                value=host["guard_kib"] * BYTES_PER_KIB,
            )
            yield GaugeMetricFamily(
                "memcoord_host_below_guard_bytes",
                "How far host available memory is below the guard (0 when at or above it); relief works on it",
                value=host.get("below_guard_kib", 0) * BYTES_PER_KIB,
            )
            yield GaugeMetricFamily(
                "memcoord_relief_shortfall_bytes",
                "Part of the host's deficit the guests' reclaimable memory could not cover this tick (0: none)",
                value=host.get("relief_shortfall_kib", 0) * BYTES_PER_KIB,
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


class Metrics:
    """The counters and histogram the observer updates, the view collector, and the HTTP endpoint."""

    def __init__(self, get_view: Callable[[], dict[str, Any] | None]) -> None:
        self.registry = CollectorRegistry()
        self.actions = Counter(
            "memcoord_actions",
            "Balloon changes decided (applied, or logged in dry run), by action and domain",
            ["domain", "action"],
            registry=self.registry,
        )
        self.errors = Counter(
            "memcoord_errors",
            "Errors: hypervisor unreachable, setMemory or stats period failed, config reload failed, state file",
            ["kind"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "memcoord_config_reloads", "Config reloads by result", ["result"], registry=self.registry
        )
        self.ticks = Counter("memcoord_ticks", "Ticks that reached the hypervisor", registry=self.registry)
        self.tick_duration = Histogram(
            "memcoord_tick_duration_seconds",
            "Time to sample, decide and apply one tick",
            buckets=TICK_BUCKETS_S,
            registry=self.registry,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.starving = Counter(
            "memcoord_domain_starving_seconds",
            "Time the domain spent classed starving (created at 0 for every managed domain)",
            ["domain"],
            registry=self.registry,
        )
        Gauge("memcoord_build_info", "memcoord's version; always 1", ["version"], registry=self.registry).labels(
            __version__
        ).set(1)
        self.reload_ok = Gauge(
            "memcoord_config_last_reload_successful",
            "1 when the last config load (start or reload) worked; 0 while the daemon runs an older config",
            registry=self.registry,
        )
        self.reload_ok_at = Gauge(
            "memcoord_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (epoch)",
            registry=self.registry,
        )
        self.config_hash = Gauge(
            "memcoord_config_hash",
            "First 48 bits of the running effective config's SHA-256: equal on hosts with equal settings",
            registry=self.registry,
        )
        self.registry.register(_ViewCollector(get_view))
        self._server: Any = None
        self._bound: tuple[Any, ...] | None = None

    def serve(self, m: MetricsConfig) -> None:
        """Start (or move) the HTTP(S) endpoint; a port already taken is logged, not fatal: balloons matter more.

        A reload restarts it when any setting changed, or when a certificate or key file did (renewed in place)."""
        address, port = m.bind
        files = (m.certfile, m.keyfile, m.client_cafile)
        bound = (address, port, m.client_auth_required, *files, *(_mtime(f) for f in files))
        if self._bound == bound:
            return
        self.shutdown()
        tls: dict[str, Any] = {}
        if m.tls:
            tls = {
                "certfile": m.certfile,
                "keyfile": m.keyfile or None,
                "client_cafile": m.client_cafile or None,
                "client_auth_required": m.client_auth_required,
            }
        scheme = "https" if m.tls else "http"
        shown = f"[{address}]" if ":" in address else address
        try:
            self._server, _thread = start_http_server(port, addr=address, registry=self.registry, **tls)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a name that does not resolve too
            log.error("metrics endpoint not started on %s://%s:%d: %s", scheme, shown, port, exc)
            self.errors.labels("metrics").inc()
            return
        self._bound = bound
        auth = ", client certificate required" if m.client_auth_required else ""
        log.info("metrics on %s://%s:%d/metrics%s", scheme, shown, port, auth)

    def configured(self, config: Config, at_s: float) -> None:
        """A config was loaded and is now running."""
        self.reload_ok.set(1)
        self.reload_ok_at.set(at_s)
        self.config_hash.set(config_hash(config))

    def domains_seen(self, managed: set[str], gone: set[str]) -> None:
        """Per-domain counters: created at 0 for managed domains, removed for domains that left."""
        for name in managed:
            self.starving.labels(name)
        for name in gone:
            with contextlib.suppress(KeyError):  # never managed, so never created
                self.starving.remove(name)

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._bound = None

    def exposition(self) -> bytes:
        """What a scrape returns, without HTTP (for tests and debugging)."""
        return generate_latest(self.registry)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None
