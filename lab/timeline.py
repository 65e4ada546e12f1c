"""The lab's timeline: what every guest looked like, once a second, seen from outside.

Acceptance tests assert on this record, not on memcoord's own account of itself: the balloon
size libvirt reports, the guest's free memory, the hog's progress from the console, the guest
kernel's OOM kills, the host's available memory. It is saved as CSV (one row per guest per
sample) and JSON (rows + events + meta), and drawn as a PNG by memcoord.admin.plot (`to_series`).
memcoord's own actions come from the timeline the daemon writes, read by lab/coordinator.py.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import psutil

from lab.lab import Lab
from memcoord.admin import plot
from memcoord.core.model import KIB_PER_MIB
from memcoord.daemon.timeline import Event, Series

# memcoord's applied actions, as the lab marks them (from the daemon's timeline, lab/coordinator.py).
ACTION_EVENT = "action"
STALL_S = 3.0  # a libvirt stats call slower than this means libvirtd was stopped or swamped
LIBVIRTD_PIDFILE = Path("/run/libvirtd.pid")
OUTAGE_KINDS = ("libvirt_error", "libvirt_stall", "libvirtd_restart", "memcoord_lost_hypervisor", "memcoord_stall")
ROW_FIELDS = (
    "t_s",
    "guest",
    "alive",
    "paused",
    "current_mib",
    "unused_mib",
    "usable_mib",
    "rss_mib",
    "stats_age_s",
    "host_available_mib",
    "hog_mib",
    "hog_state",
    "oom_kills",
    "coordinator_alive",
)


def _mib(stats: dict[str, int], key: str) -> float | None:
    value = stats.get(key)
    return None if value is None else round(value / KIB_PER_MIB, 1)


@dataclass
class Timeline:
    """Rows (one per guest per sample), events (OOM kills, memcoord actions) and meta (config, limits)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def guests(self) -> list[str]:
        return sorted({r["guest"] for r in self.rows})

    def for_guest(self, guest: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["guest"] == guest]

    def series(self, guest: str, key: str) -> list[tuple[float, Any]]:
        """(t_s, value) pairs, skipping samples where the value is missing."""
        return [(r["t_s"], r[key]) for r in self.for_guest(guest) if r.get(key) is not None]

    def outages(self) -> list[dict[str, Any]]:
        """When libvirtd was unavailable (stopped, killed, swamped by others): the environment, not memcoord."""
        return [e for e in self.events if e["kind"] in OUTAGE_KINDS]

    def events_of(self, kind: str, guest: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind and (guest is None or e.get("guest") == guest)]

    def host_available_mib(self) -> list[tuple[float, float]]:
        seen: dict[float, float] = {}
        for r in self.rows:
            seen.setdefault(r["t_s"], r["host_available_mib"])
        return sorted(seen.items())

    # -- files -------------------------------------------------------------------------------------

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=ROW_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps({"meta": self.meta, "rows": self.rows, "events": self.events}, indent=1))

    @classmethod
    def read_json(cls, path: Path) -> Timeline:
        data = json.loads(path.read_text())
        return cls(data["rows"], data["events"], data["meta"])

    def save(self, directory: Path, stem: str = "timeline") -> list[Path]:
        """CSV + JSON + PNG into directory; returns the paths written (no PNG without matplotlib)."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = [directory / f"{stem}.csv", directory / f"{stem}.json"]
        self.write_csv(paths[0])
        self.write_json(paths[1])
        png = directory / f"{stem}.png"
        if self.rows and plot.have_matplotlib():  # without the `lab` extra a run still keeps CSV and JSON
            plot.write(to_series(self), png, self.meta.get("title", "memcoord lab"))
            paths.append(png)
        return paths


def to_series(timeline: Timeline) -> Series:
    """The lab's record in the plot's terms (memcoord.admin.plot draws it): current and unused per guest, the hog's
    size as an extra line, memcoord's actions, OOM kills and hog events, the host against its guard."""
    series = Series(
        source="lab",
        host_guard_mib=timeline.meta.get("host_min_available_mib") or None,
        max_mib=timeline.meta.get("max_mib"),
        floor_mib=timeline.meta.get("floor_mib"),
    )
    for r in timeline.rows:
        g = series.guest(r["guest"])
        g.t_s.append(r["t_s"])
        g.current_mib.append(r.get("current_mib"))
        g.unused_mib.append(r.get("unused_mib"))
        g.extra.setdefault("hog", []).append(r.get("hog_mib"))
    for t_s, mib in timeline.host_available_mib():
        series.host_t_s.append(t_s)
        series.host_available_mib.append(mib)
    for e in timeline.events:
        if not e.get("guest"):
            continue  # host-wide marks (memcoord_start, outages)
        if e["kind"] == ACTION_EVENT:
            label = f"{e['action']} {e['from_mib']}->{e['to_mib']} MiB"
            series.events.append(Event(e["t_s"], e["guest"], e["action"], e["to_mib"], label))
        else:
            series.events.append(Event(e["t_s"], e["guest"], e["kind"], None, e["kind"]))
    return series


class Recorder:
    """Samples the lab once per interval in a background thread; a context manager.

    `coordinator_alive` is a callable (e.g. memcoord's process poll) recorded per sample,
    so "memcoord stayed alive" is a fact on the timeline too.
    """

    def __init__(
        self,
        lab: Lab,
        interval_s: float = 1.0,
        coordinator_alive: Callable[[], bool] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.lab = lab
        self.interval_s = interval_s
        self.coordinator_alive = coordinator_alive
        self.timeline = Timeline(meta={"max_mib": lab.max_mib, "interval_s": interval_s, **(meta or {})})
        self.t0_mono_s = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}  # per guest: OOM kills, hog events recorded
        self.errors: list[str] = []
        self._libvirtd_pid: int | None = None

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def t_s(self, t_mono_s: float | None = None) -> float:
        """Seconds on the timeline's clock (since the recorder was created)."""
        return round((time.monotonic() if t_mono_s is None else t_mono_s) - self.t0_mono_s, 2)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="lab-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def mark(self, kind: str, guest: str | None = None, **data: Any) -> None:
        """Add an event (a workload step, a memcoord action) on the timeline's clock."""
        t_mono_s = data.pop("t_mono_s", None)
        with self._lock:
            self.timeline.events.append({"t_s": self.t_s(t_mono_s), "kind": kind, "guest": guest, **data})

    def latest(self) -> dict[str, dict[str, Any]]:
        """The newest row per guest (for live views)."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for r in reversed(self.timeline.rows):
                out.setdefault(r["guest"], r)
                if len(out) == len(self.lab.guests):
                    break
            return out

    def _loop(self) -> None:
        next_s = time.monotonic()
        while not self._stop.is_set():
            t0_s = time.monotonic()
            try:
                self.sample()
            except libvirt.libvirtError as e:
                self.errors.append(f"{self.t_s()}: {e}")
                self.mark("libvirt_error", error=str(e))
            took_s = time.monotonic() - t0_s
            if took_s > STALL_S:
                # libvirtd is shared: another user may stop or kill it. Such a gap is the
                # environment's doing, and a test must be able to tell it from memcoord's.
                self.mark("libvirt_stall", t_mono_s=t0_s, took_s=round(took_s, 1))
            self._check_libvirtd_pid()
            # After a stall, resume the 1 s rhythm from now instead of sampling in a burst.
            next_s = max(next_s + self.interval_s, time.monotonic())
            self._stop.wait(max(0.0, next_s - time.monotonic()))

    def _check_libvirtd_pid(self) -> None:
        try:
            pid = int(LIBVIRTD_PIDFILE.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if self._libvirtd_pid is not None and pid != self._libvirtd_pid:
            self.mark("libvirtd_restart", old_pid=self._libvirtd_pid, new_pid=pid)
        self._libvirtd_pid = pid

    def sample(self) -> None:
        """One row per guest: libvirt balloon stats, console state, host memory."""
        stats = self.lab.balloon_stats()
        t_s = self.t_s()
        now_wall_s = time.time()
        host_available_mib = round(psutil.virtual_memory().available / 2**20, 1)
        coordinator_alive = self.coordinator_alive() if self.coordinator_alive else None
        rows = []
        for g in self.lab.guests:
            s = stats.get(g.name, {})
            cs = g.console.state
            last_update = s.get("balloon.last-update")
            row = {
                "t_s": t_s,
                "guest": g.name,
                "alive": s.get("state.state") == libvirt.VIR_DOMAIN_RUNNING and not cs.panicked,
                # Paused by a user (a scenario's own pause; memcoord never pauses a guest): not running, and not
                # dead either. QEMU's own pauses (I/O error, watchdog, crash) are not this.
                "paused": s.get("state.state") == libvirt.VIR_DOMAIN_PAUSED
                and s.get("state.reason") == libvirt.VIR_DOMAIN_PAUSED_USER,
                "current_mib": _mib(s, "balloon.current"),
                "unused_mib": _mib(s, "balloon.unused"),
                "usable_mib": _mib(s, "balloon.usable"),
                "rss_mib": _mib(s, "balloon.rss"),
                "stats_age_s": None if last_update is None else round(now_wall_s - last_update, 1),
                "host_available_mib": host_available_mib,
                # What the hog holds now: nothing once it was killed or exited.
                "hog_mib": cs.hog_mib if cs.hog_state in ("growing", "holding") else 0,
                "hog_state": cs.hog_state,
                "oom_kills": len(cs.oom_kills),
                "coordinator_alive": coordinator_alive,
            }
            rows.append(row)
            seen_kills, seen_hog = self._seen.get(g.name, (0, 0))
            for kill in cs.oom_kills[seen_kills:]:
                self.mark("oom_kill", g.name, t_mono_s=kill.t_mono_s, pid=kill.pid, comm=kill.comm)
            for ev in cs.hog_events[seen_hog:]:
                self.mark(f"hog_{ev.kind}", g.name, t_mono_s=ev.t_mono_s, hog_mib=ev.hog_mib)
            self._seen[g.name] = (len(cs.oom_kills), len(cs.hog_events))
        with self._lock:
            self.timeline.rows.extend(rows)
