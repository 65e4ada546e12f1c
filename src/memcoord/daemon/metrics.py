"""Prometheus metrics: one memcoord per host, Prometheus aggregates the fleet.

What the observer counts (actions, errors, reloads, ticks, tick durations, starving time) is kept here as plain
numbers. They become metric families only when scraped (exposition.py, which reads these counts and knows the
client library), together with the per-domain sizes, host memory and guest classes of the latest published
view: a domain that stops or is undefined disappears from the scrape instead of freezing at its last value.
Each Metrics object has its own counts, so tests can run several services in one process.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from memcoord.core.config import Config

# Every kind of error, created at 0 so that increase() and rate() see the first one (a series that starts at 1
# has no earlier sample to rise from).
# set_memory: refused or not sent; set_memory_unknown: sent, no answer in time (it may still land).
ERROR_KINDS = (
    "hypervisor",
    "set_memory",
    "set_memory_unknown",
    "stats_period",
    "reload",
    "state_file",
    "timeline",
    "metrics",
)
RELOAD_RESULTS = ("success", "failure")

# Ticks are one bulk stats call and a few setMemory calls: milliseconds normally, seconds when libvirt is slow.
TICK_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def config_hash(config: Config) -> int:
    """The effective config's SHA-256, first 48 bits: exact in a float64 sample, and the same on every host
    running the same settings (comments, key order and defaults written out or not make no difference)."""
    canonical = json.dumps(config.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return int(hashlib.sha256(canonical.encode()).hexdigest()[:12], 16)


@dataclass
class DurationHistogram:
    """Observations counted in buckets, as a Prometheus histogram has them: a value goes to the first bucket whose
    upper bound is at or above it, or to the last one (+Inf) when none is."""

    bounds_s: tuple[float, ...]
    counts: list[int] = field(init=False)
    sum_s: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds_s) + 1)

    def observe(self, value_s: float) -> None:
        self.counts[bisect.bisect_left(self.bounds_s, value_s)] += 1
        self.sum_s += value_s


@dataclass(frozen=True)
class Counts:
    """A consistent copy of the counts, for one scrape."""

    actions: dict[tuple[str, str], float]
    errors: dict[str, float]
    reloads: dict[str, float]
    ticks: float
    tick_bounds_s: tuple[float, ...]
    tick_bucket_counts: list[int]
    tick_sum_s: float
    starving_s: dict[str, float]
    reload_ok: int
    reload_ok_at_s: float
    config_hash: int


class Metrics:
    """The counts the observer updates, and the view a scrape shows with them (get_view)."""

    def __init__(self, get_view: Callable[[], dict[str, Any] | None]) -> None:
        self.get_view = get_view
        # The endpoint's thread reads the counts while the loop updates them.
        self._lock = threading.Lock()
        self._actions: dict[tuple[str, str], float] = {}
        self._errors: dict[str, float] = dict.fromkeys(ERROR_KINDS, 0.0)
        self._reloads: dict[str, float] = dict.fromkeys(RELOAD_RESULTS, 0.0)
        self._ticks = 0.0
        self._tick_duration = DurationHistogram(TICK_BUCKETS_S)
        self._starving_s: dict[str, float] = {}
        self._reload_ok = 0
        self._reload_ok_at_s = 0.0
        self._config_hash = 0

    # -- what the observer counts ----------------------------------------------------------------------------
    def count_action(self, domain: str, action: str) -> None:
        with self._lock:
            self._actions[domain, action] = self._actions.get((domain, action), 0.0) + 1

    def count_error(self, kind: str) -> None:
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0.0) + 1

    def count_reload(self, result: str) -> None:
        """result: one of RELOAD_RESULTS. A failed reload also says the running config is not the file's."""
        with self._lock:
            self._reloads[result] += 1
            if result == "failure":
                self._reload_ok = 0

    def count_tick(self) -> None:
        with self._lock:
            self._ticks += 1

    def observe_tick_duration(self, duration_s: float) -> None:
        with self._lock:
            self._tick_duration.observe(duration_s)

    def add_starving(self, domain: str, seconds: float) -> None:
        with self._lock:
            self._starving_s[domain] = self._starving_s.get(domain, 0.0) + seconds

    def configured(self, config: Config, at_s: float) -> None:
        """A config was loaded and is now running."""
        with self._lock:
            self._reload_ok = 1
            self._reload_ok_at_s = at_s
            self._config_hash = config_hash(config)

    def domains_seen(self, managed: Iterable[str], gone: Iterable[str]) -> None:
        """Per-domain counters: created at 0 for managed domains, removed for domains that left."""
        with self._lock:
            for name in managed:
                self._starving_s.setdefault(name, 0.0)
            for name in gone:
                self._starving_s.pop(name, None)

    def counts(self) -> Counts:
        with self._lock:
            return Counts(
                actions=dict(self._actions),
                errors=dict(self._errors),
                reloads=dict(self._reloads),
                ticks=self._ticks,
                tick_bounds_s=self._tick_duration.bounds_s,
                tick_bucket_counts=list(self._tick_duration.counts),
                tick_sum_s=self._tick_duration.sum_s,
                starving_s=dict(self._starving_s),
                reload_ok=self._reload_ok,
                reload_ok_at_s=self._reload_ok_at_s,
                config_hash=self._config_hash,
            )
