"""Questions the acceptance suite and the demo ask of a timeline, answered from its samples."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from typing import Any

from lab.timeline import Timeline


def first_event_t_s(timeline: Timeline, kind: str, guest: str | None = None) -> float | None:
    events = timeline.events_of(kind, guest)
    return min(e["t_s"] for e in events) if events else None


def value_at(timeline: Timeline, guest: str, key: str, t_s: float) -> Any:
    """The last sampled value at or before t_s (the first sample if t_s is earlier)."""
    pts = timeline.series(guest, key)
    before = [v for t, v in pts if t <= t_s]
    return before[-1] if before else (pts[0][1] if pts else None)


def peak(timeline: Timeline, guest: str, key: str, t_from_s: float = 0.0, t_to_s: float = float("inf")) -> float:
    vals = [v for t, v in timeline.series(guest, key) if t_from_s <= t <= t_to_s]
    return max(vals) if vals else float("nan")


def minimum(timeline: Timeline, guest: str, key: str, t_from_s: float = 0.0, t_to_s: float = float("inf")) -> float:
    vals = [v for t, v in timeline.series(guest, key) if t_from_s <= t <= t_to_s]
    return min(vals) if vals else float("nan")


def first_t_s(timeline: Timeline, guest: str, key: str, pred: Any, t_from_s: float = 0.0) -> float | None:
    """When the value first satisfied pred, at or after t_from_s."""
    for t, v in timeline.series(guest, key):
        if t >= t_from_s and pred(v):
            return t
    return None


@dataclass(frozen=True)
class Drop:
    """The largest fall of a guest's balloon between two consecutive samples."""

    drop_mib: float
    t_s: float
    gaps_skipped: int  # sample pairs further apart than max_gap_s, not judged


def largest_drop(timeline: Timeline, guest: str, max_gap_s: float = 1.5, t_from_s: float = 0.0) -> Drop:
    """Consecutive samples only: a recorder stalled by a busy host must not merge two steps into one."""
    pts = [(t, v) for t, v in timeline.series(guest, "current_mib") if t >= t_from_s]
    worst, worst_t, skipped = 0.0, 0.0, 0
    for (t0, v0), (t1, v1) in itertools.pairwise(pts):
        if t1 - t0 > max_gap_s:
            skipped += 1
            continue
        if v0 - v1 > worst:
            worst, worst_t = v0 - v1, t1
    return Drop(round(worst, 1), worst_t, skipped)


def invariant_violations(
    timeline: Timeline, floor_mib: float, oom_ok: dict[str, float] | None = None, tolerance_mib: float = 1.0
) -> list[str]:
    """The "always" rules (scenario 4) as a list of human-readable violations; empty means all held.

    oom_ok maps a guest to the balloon size from which an OOM kill of its hog is expected (the hog
    reached what the guest may have); every other OOM kill, and any kill of a non-hog, is a violation.
    """
    oom_ok = oom_ok or {}
    out: list[str] = []
    for guest in timeline.guests:
        rows = timeline.for_guest(guest)
        dead = [r["t_s"] for r in rows if not r["alive"] and not r.get("paused")]
        if dead:
            out.append(f"{guest}: not running from t={dead[0]} s (guest kernel died or domain stopped)")
        low = [
            (r["t_s"], r["current_mib"])
            for r in rows
            if r["current_mib"] is not None and r["current_mib"] < floor_mib - tolerance_mib
        ]
        if low:
            out.append(f"{guest}: below the floor {floor_mib} MiB: {low[:3]}")
    for e in timeline.events_of("oom_kill"):
        guest = e["guest"]
        current_mib = value_at(timeline, guest, "current_mib", e["t_s"])
        if e["comm"] != "hog":
            out.append(f"{guest}: OOM killed {e['comm']} (pid {e['pid']}) at t={e['t_s']} s, not a hog")
        elif guest not in oom_ok:
            out.append(f"{guest}: unexpected OOM kill of the hog at t={e['t_s']} s with {current_mib} MiB")
        elif current_mib is not None and current_mib < oom_ok[guest]:
            out.append(
                f"{guest}: hog OOM killed at t={e['t_s']} s with only {current_mib} MiB "
                f"(expected only at >= {oom_ok[guest]} MiB)"
            )
    started = [r for r in timeline.rows if r["coordinator_alive"] is not None]
    first_alive = next((r["t_s"] for r in started if r["coordinator_alive"]), None)
    if first_alive is None:
        out.append("memcoord never seen alive")
    else:
        gone = [r["t_s"] for r in started if r["t_s"] >= first_alive and not r["coordinator_alive"]]
        if gone:
            out.append(f"memcoord not alive at t={gone[0]} s")
    rc = timeline.meta.get("memcoord_exit_code")
    if rc not in (None, 0):
        out.append(f"memcoord exited with {rc} on SIGTERM")
    return out


def workload_window_s(timeline: Timeline) -> tuple[float, float]:
    """From the first hog start to the last hog death or exit (the whole run if there were none)."""
    starts = [e["t_s"] for e in timeline.events_of("hog_start")]
    ends = [e["t_s"] for e in timeline.events if e["kind"] in ("hog_killed", "hog_exit")]
    last_s = timeline.rows[-1]["t_s"] if timeline.rows else 0.0
    return (min(starts) if starts else 0.0, max(ends) if ends else last_s)


def foreign_use_mib(timeline: Timeline, t_from_s: float, t_to_s: float) -> float:
    """Host memory taken by something other than the lab's QEMUs during [t_from, t_to] (median, MiB).

    Host available memory falls as the guests' QEMU processes grow (balloon.rss); a fall beyond that
    is another user of the host. The median ignores the brief skew between the two readings while
    balloons move. The host guard scenarios are only meaningful on a host where this stays small.
    """
    times = sorted({r["t_s"] for r in timeline.rows if t_from_s <= r["t_s"] <= t_to_s})
    if len(times) < 2:
        return 0.0

    def at(t_s: float) -> tuple[float, float]:
        rows = [r for r in timeline.rows if r["t_s"] == t_s]
        return rows[0]["host_available_mib"], sum(r["rss_mib"] or 0.0 for r in rows)

    avail0_mib, rss0_mib = at(times[0])
    foreign = []
    for t in times[1:]:
        avail_mib, rss_mib = at(t)
        foreign.append((avail0_mib - avail_mib) - (rss_mib - rss0_mib))
    return round(statistics.median(foreign), 1)
