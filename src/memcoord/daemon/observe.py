"""The service's one hook for everything watchable: the state file, Prometheus metrics, the timeline.

The service calls a handful of methods (configure, tick_done, tick_failed, reload_failed, start, stop); this
module turns them into a view (a plain JSON-able dict, see state.py) and hands it to the publishers. Keeping
it out of service.py keeps the loop readable and lets other branches change the loop without touching this.
No failure here may stop the coordinator: a state file or timeline that cannot be written is logged once
per distinct error and counted.
"""

from __future__ import annotations

import grp
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from memcoord.core.config import Config
from memcoord.core.model import ApplyResult, GuestClass, Outcome, Plan, Snapshot, mib_to_kib
from memcoord.core.room import floors_kib, freeable_kib
from memcoord.daemon import state, timeline
from memcoord.daemon.exposition import Endpoint
from memcoord.daemon.metrics import Metrics

log = logging.getLogger("memcoord")

# The first view is published before the first tick, which may wait for a connection (8 s for a hung libvirtd)
# and a tick deadline (12 s): status must not call the daemon hung meanwhile.
STARTUP_GRACE_S = 30.0


class Observer:
    """Tracks what the daemon did and publishes it. With publish=False it only keeps the view in memory."""

    def __init__(self, publish: bool = True) -> None:
        self.publish_enabled = publish
        self.pid = os.getpid()
        self.started_at_s = time.time()
        self._config: Config | None = None
        self.config_path: Path | None = None
        self.loaded_at_s: float | None = None
        self.reload = "never"
        self.reload_error: str | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.ticks = 0
        self.errors_by_kind: dict[str, int] = {}
        self.last_error: str | None = None
        self.last_error_at_s: float | None = None
        self.targets_kib: dict[str, int] = {}
        self.last_actions: dict[str, dict[str, Any]] = {}
        self.snapshot: Snapshot | None = None
        self.plan: Plan | None = None
        self.hypervisor_error: str | None = None
        self.period_failing: dict[str, str] = {}
        self.skipped_last_tick = 0
        self.last_tick_duration_s: float | None = None
        self.view: dict[str, Any] | None = None
        self.metrics = Metrics(lambda: self.view)
        self.endpoint = Endpoint(self.metrics)
        self._recorder: timeline.Recorder | None = None
        self._gid: int | None = None
        self._logged: set[str] = set()
        self._serving = False
        self._managed: set[str] = set()
        self._last_tick_done_s: float | None = None

    @property
    def config(self) -> Config:
        """The config configure() was given; the defaults before that (an Observer used on its own)."""
        if self._config is None:
            self._config = Config()
        return self._config

    # -- hooks the service calls -----------------------------------------------------------------------------
    def configure(self, config_path: Path, config: Config) -> None:
        """A config was loaded (at start or by a successful reload): point the publishers at its settings."""
        if self.loaded_at_s is not None:
            self.reload, self.reload_error = "ok", None
            self.reloads_ok += 1
            self.metrics.count_reload("success")
        self.config_path, self._config, self.loaded_at_s = config_path.absolute(), config, time.time()
        self.metrics.configured(config, self.loaded_at_s)
        self._gid = grp.getgrnam(config.status.group).gr_gid if config.status.group else None
        if self._recorder is not None and str(self._recorder.path) != config.timeline.path:
            self._recorder.close()
            self._recorder = None
        if self.publish_enabled and config.timeline.path and self._recorder is None:
            self._recorder = timeline.Recorder(Path(config.timeline.path), mib_to_kib(config.timeline.max_mib) * 1024)
        if self._serving:
            self._serve()
        self._refresh()

    def reload_failed(self, error: str) -> None:
        self.reload, self.reload_error = "failed", error
        self.reloads_failed += 1
        self.metrics.count_reload("failure")
        self._error("reload", error)
        self._refresh()

    def start(self) -> None:
        """The daemon's loop begins: open the metrics endpoint if configured, and publish a first view (no tick
        yet: `memcoord status` says it waits for libvirt) so that status works from the start."""
        self._serving = True
        self._serve()
        if self.view is None:
            now_s = time.time()
            self._publish(now_s, now_s + self.config.loop.interval_s + STARTUP_GRACE_S, None)

    def tick_done(
        self,
        snapshot: Snapshot,
        plan: Plan,
        results: Sequence[ApplyResult],
        duration_s: float,
        problems: Iterable[str] = (),
        period_failing: Mapping[str, str] = {},
        skipped: int = 0,
        deadline_spent: bool = False,
    ) -> None:
        """A tick reached the hypervisor: record what it saw and did, then publish. period_failing: domains
        whose stats period is still being retried; skipped: changes the tick's deadline left for the next;
        deadline_spent: the tick ran out of its deadline (counted as an error of kind "deadline")."""
        now_s = time.time()
        dry_run = self.config.loop.dry_run
        for problem in problems:
            self._error("stats_period", problem)
        self.period_failing = dict(period_failing)
        self.skipped_last_tick = skipped
        if deadline_spent:
            self._error("deadline", f"tick deadline spent, {skipped} setMemory call(s) left for the next tick")
        actions = []
        for result in results:
            c = result.change
            action = {
                "domain": c.domain,
                "action": str(c.action),
                "from_kib": c.from_kib,
                "to_kib": c.to_kib,
                "reason": c.reason,
                "rule": None if c.why is None else str(c.why.rule),
                "error": result.error,
                "outcome": str(result.outcome),
            }
            actions.append(action)
            self.last_actions[c.domain] = {**action, "at_s": now_s, "dry_run": dry_run}
            if result.ok:
                self.metrics.count_action(c.domain, str(c.action))
                if not dry_run:
                    self.targets_kib[c.domain] = c.to_kib
            elif result.outcome is Outcome.UNKNOWN:
                what = f"setMemory {c.domain} {c.to_kib} KiB, outcome unknown: {result.error}"
                self._error("set_memory_unknown", what)
            else:
                self._error("set_memory", f"setMemory {c.domain} {c.to_kib} KiB: {result.error}")
        running = {d.name for d in snapshot.domains}
        for known in (self.targets_kib, self.last_actions):
            for name in set(known) - running:
                del known[name]
        self._count_starving(plan, snapshot.taken_at_s)
        self.snapshot, self.plan, self.hypervisor_error = snapshot, plan, None
        self.ticks += 1
        self.last_tick_duration_s = duration_s
        self.metrics.count_tick()
        self.metrics.observe_tick_duration(duration_s)
        self._publish(now_s, now_s + self.config.loop.interval_s + duration_s, actions)

    def tick_failed(self, error: str, duration_s: float, next_in_s: float) -> None:
        """The hypervisor could not be reached; the last snapshot is kept but marked as such."""
        now_s = time.time()
        self.hypervisor_error = error
        self.last_tick_duration_s = duration_s
        self._last_tick_done_s = None  # the outage is not starving time
        self.metrics.observe_tick_duration(duration_s)
        self._error("hypervisor", error)
        self._publish(now_s, now_s + next_in_s + duration_s, [])

    def stop(self) -> None:
        """The daemon exits: say so in the state file (status then reports when), close everything."""
        self._serving = False
        self._managed = set()
        self._last_tick_done_s = None
        self.endpoint.shutdown()
        if self.view is not None and self.publish_enabled:
            now_s = time.time()
            self.view = {**self.view, "running": False, "stopped_at_s": now_s, "updated_at_s": now_s}
            self._write_state(self.view)
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None

    # -- internals ---------------------------------------------------------------------------------------
    def _count_starving(self, plan: Plan, now_s: float) -> None:
        """Starving time per domain: the time since the previous tick, for the domains starving now. The
        snapshots' clock, not the wall's (the simulator's runs faster). Capped at two intervals, so that an
        outage (no ticks) is not counted as starving."""
        managed = set(plan.classes)
        self.metrics.domains_seen(managed, self._managed - managed)
        self._managed = managed
        if self._last_tick_done_s is not None:
            elapsed_s = min(now_s - self._last_tick_done_s, 2 * self.config.loop.interval_s)
            for name, guest_class in plan.classes.items():
                if guest_class is GuestClass.STARVING and elapsed_s > 0:
                    self.metrics.add_starving(name, elapsed_s)
        self._last_tick_done_s = now_s

    def _serve(self) -> None:
        m = self.config.metrics
        if self.publish_enabled and m.enabled:
            self.endpoint.serve(m)
        else:
            self.endpoint.shutdown()

    def _error(self, kind: str, message: str) -> None:
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1
        self.last_error, self.last_error_at_s = f"{kind}: {message}", time.time()
        self.metrics.count_error(kind)

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.error("%s", message)

    def build_view(self, now_s: float, next_update_by_s: float) -> dict[str, Any]:
        """The whole published view, from what the observer knows (see state.py for the schema)."""
        snap, plan, cfg = self.snapshot, self.plan, self.config
        domains = []
        host = None
        if snap is not None and plan is not None:
            for d in sorted(snap.domains, key=lambda d: d.name):
                managed = d.name in plan.classes
                floor_kib, floor_source = cfg.floor(d.name, d.max_kib, d.settings)
                ceiling_kib, ceiling_source = cfg.ceiling(d.name, d.max_kib, d.settings)
                domains.append(
                    {
                        "name": d.name,
                        "managed": managed,
                        "class": str(plan.classes[d.name]) if managed else "unmanaged",
                        "current_kib": d.current_kib,
                        "max_kib": d.max_kib,
                        "target_kib": self.targets_kib.get(d.name),
                        "unused_kib": d.unused_kib,
                        "usable_kib": d.usable_kib,
                        "stats_age_s": None if not d.last_update_s else round(snap.taken_at_s - d.last_update_s, 1),
                        "stats_updated_at_s": d.last_update_s,
                        "last_action": self.last_actions.get(d.name),
                        "floor_kib": floor_kib if managed else None,
                        "ceiling_kib": ceiling_kib if managed else None,
                        "floor_source": str(floor_source) if managed else None,
                        "ceiling_source": str(ceiling_source) if managed else None,
                        "excluded_by": None if managed else cfg.exclusion(d.name, d.settings),
                        "metadata": None if d.settings is None else dict(d.settings.metadata),
                        "min_guarantee_kib": None if d.settings is None else d.settings.min_guarantee_kib,
                        "stats_period_error": self.period_failing.get(d.name),
                        "refused": plan.refused.get(d.name),
                        "balks": d.name in plan.balking,
                    }
                )
            host = {
                "available_kib": snap.host.available_kib,
                "total_kib": snap.host.total_kib,
                "guard_kib": mib_to_kib(cfg.guard_mib(snap.host.total_kib)),
                "headroom_kib": plan.host_headroom_kib,
                "below_guard_kib": plan.host_deficit_kib,
                "relief_shortfall_kib": plan.relief_shortfall_kib,
                "reserved_kib": snap.host.reserved_kib,
                "pressure_some_avg10": snap.host.pressure_some_avg10,
                "freeable_kib": freeable_kib(snap, plan.bands, mib_to_kib(cfg.host.guest_overhead_mib)),
                "floors_kib": floors_kib(plan.bands),
            }
        return {
            "version": state.SCHEMA_VERSION,
            "pid": self.pid,
            "running": True,
            "stopped_at_s": None,
            "started_at_s": self.started_at_s,
            "updated_at_s": now_s,
            "next_update_by_s": next_update_by_s,
            "ticks": self.ticks,
            "uri": cfg.libvirt.uri,
            "dry_run": cfg.loop.dry_run,
            "interval_s": cfg.loop.interval_s,
            "last_tick_duration_s": self.last_tick_duration_s,
            "hypervisor_ok": self.hypervisor_error is None and snap is not None,
            # No tick has reached the hypervisor since the daemon started (libvirtd down or slow at boot).
            "waiting_for_hypervisor": snap is None,
            "hypervisor_error": self.hypervisor_error,
            "snapshot_at_s": None if snap is None else snap.taken_at_s,
            "stats_period_failing": dict(self.period_failing),
            "skipped_last_tick": self.skipped_last_tick,
            "config": {
                "path": None if self.config_path is None else str(self.config_path),
                "loaded_at_s": self.loaded_at_s,
                "reload": self.reload,
                "reload_error": self.reload_error,
                "reloads_ok": self.reloads_ok,
                "reloads_failed": self.reloads_failed,
                # What the daemon runs with (after --interval/--dry-run), for `memcoord print-config --running`.
                "effective": cfg.model_dump(mode="json", exclude_none=True),
            },
            "host": host,
            "errors": {
                "count": sum(self.errors_by_kind.values()),
                "by_kind": dict(self.errors_by_kind),
                "last": self.last_error,
                "last_at_s": self.last_error_at_s,
            },
            "domains": domains,
        }

    def _refresh(self) -> None:
        """Republish between ticks (after a reload), so status shows it at once; the timeline waits for a tick."""
        if self.view is not None:
            self._publish(time.time(), self.view["next_update_by_s"], None)

    def _publish(self, now_s: float, next_update_by_s: float, actions: list[dict[str, Any]] | None) -> None:
        self.view = self.build_view(now_s, next_update_by_s)
        if not self.publish_enabled:
            return
        self._write_state(self.view)
        if self._recorder is not None and actions is not None:
            try:
                self._recorder.write(timeline.line_from_view(self.view, actions))
            except OSError as exc:
                self._error("timeline", str(exc))
                self._log_once(f"timeline:{exc}", f"cannot write the timeline {self._recorder.path}: {exc}")

    def _write_state(self, view: dict[str, Any]) -> None:
        path = Path(self.config.status.path)
        try:
            state.publish(path, view, self._gid)
        except OSError as exc:
            self._error("state_file", str(exc))
            self._log_once(f"state:{exc}", f"cannot publish the state file {path}: {exc}")
