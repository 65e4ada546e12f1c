"""The Prometheus side of the metrics (see metrics.py): metric families built at scrape time from memcoord's
counts and its latest published view, the registry and the HTTP(S) endpoint. The only module that imports the
client library, and imported only when the endpoint is enabled or the text is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest, start_http_server
from prometheus_client.utils import floatToGoString

from memcoord import __version__

if TYPE_CHECKING:
    from memcoord.daemon.metrics import Metrics

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


def registry(metrics: Metrics) -> CollectorRegistry:
    """A registry of its own for one Metrics object: its counts, the gauges of its view, and the client library's
    process_* series (the daemon's own RSS, CPU, open files: what an alert on memcoord itself reads)."""
    out = CollectorRegistry()
    out.register(_CountsCollector(metrics))
    out.register(_ViewCollector(metrics.get_view))
    ProcessCollector(registry=out)
    return out


def text(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def start_server(port: int, address: str, registry: CollectorRegistry, tls: dict[str, Any]) -> Any:
    """The endpoint's HTTP(S) server, serving in a thread of its own; what shutdown() and server_close() stop."""
    server, _thread = start_http_server(port, addr=address, registry=registry, **tls)
    return server


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
            buckets.append((floatToGoString(bound_s), cumulative))
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
