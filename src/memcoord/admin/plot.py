"""Drawing timelines: the one plotting module for `memcoord plot`, `memcoord simulate --plot` and the lab.

Everything is drawn from a `timeline.Series`: current (the balloon's size) and unused memory per guest over
time, one panel per guest, actions marked as their `Action` says, and the host's available memory against its
guard at the bottom. Each source turns its own record into a Series: the daemon's timeline (`timeline.read`),
a simulator run (`from_simulation`), the lab's recorder (lab/timeline.py). matplotlib is an optional extra
(`pip install memcoord[plot]`): a host that only runs the daemon does not need it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memcoord.core.model import Action
from memcoord.daemon.timeline import Series, TimelineError, read

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Tool events drawn as vertical lines (an action is a marker on the current line instead).
EVENT_LINES = {"oom_kill": ("red", "-")}
OTHER_EVENT_LINE = ("grey", ":")
# Panels beyond this many guests are left out: a plot of a thousand guests says nothing.
MAX_GUEST_PANELS = 12


def _nan(values: list[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def figure(series: Series, title: str | None = None) -> Figure:
    """One panel per guest (current, unused, extra lines, events) and one for the host; lines carry labels."""
    from matplotlib.figure import Figure

    names = sorted(series.guests)[:MAX_GUEST_PANELS]
    panels = len(names) + (1 if series.host_t_s else 0)
    fig = Figure(figsize=(10, 2.2 * max(1, panels)), layout="constrained")
    axes = fig.subplots(max(1, panels), 1, sharex=True, squeeze=False)[:, 0]
    actions = {str(a): a for a in Action}
    for ax, name in zip(axes, names, strict=False):
        g = series.guests[name]
        ax.plot(g.t_s, _nan(g.current_mib), "-", label="current")
        ax.plot(g.t_s, _nan(g.unused_mib), "--", label="unused")
        for label, values in g.extra.items():
            ax.plot(g.t_s, _nan(values), ":", label=label)
        if series.max_mib:
            ax.axhline(series.max_mib, color="grey", lw=0.6)
        if series.floor_mib:
            ax.axhline(series.floor_mib, color="grey", lw=0.6, ls="--")
        for kind in sorted({e.kind for e in series.events if e.guest == name}):
            events = [e for e in series.events if e.guest == name and e.kind == kind]
            action = actions.get(kind)
            if action is not None and all(e.mib is not None for e in events):
                ax.plot(
                    [e.t_s for e in events],
                    [e.mib for e in events],
                    linestyle="none",
                    marker=action.marker,
                    color=action.colour,
                    label=kind,
                )
            else:
                colour, style = EVENT_LINES.get(kind, OTHER_EVENT_LINE)
                for i, e in enumerate(events):
                    ax.axvline(e.t_s, color=colour, ls=style, lw=0.8, label=kind if i == 0 else None)
        ax.set_ylabel(f"{name}\nMiB")
        ax.legend(loc="upper left", fontsize=7, ncol=6)
        ax.grid(alpha=0.3)
    if series.host_t_s:
        ax = axes[-1]
        ax.plot(series.host_t_s, series.host_available_mib, label="host available")
        if series.host_guard_mib is not None:
            ax.axhline(series.host_guard_mib, color="red", lw=0.8, label="host guard")
        ax.set_ylabel("host\nMiB")
        ax.legend(loc="upper left", fontsize=7)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds from the start")
    fig.suptitle(title or f"memcoord timeline ({series.source})")
    return fig


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write(series: Series, out_path: Path | str, title: str | None = None) -> None:
    """Draw series to a PNG (needs matplotlib)."""
    figure(series, title).savefig(os.fspath(out_path), dpi=90)


def from_simulation(report: Any) -> Series:
    """A simulate.RunReport recorded with run(record=True): current and unused (free) per guest, used as extra.

    Typed loosely so that this module does not import the simulator (which imports it)."""
    tl = report.timeline
    if tl is None:
        raise ValueError("run(record=True) is needed for a plot")
    series = Series(source="simulate", host_guard_mib=report.host_guard_mib)
    series.host_t_s = list(tl.t_s)
    series.host_available_mib = list(tl.host_available_mib)
    for name, current in tl.current_mib.items():
        g = series.guest(name)
        g.t_s = list(tl.t_s)
        g.current_mib = list(current)
        used, cache = tl.used_mib[name], tl.cache_mib[name]
        g.unused_mib = [c - u - k for c, u, k in zip(current, used, cache, strict=True)]
        g.extra["used"] = list(used)
        if any(cache):
            g.extra["used+cache"] = [u + k for u, k in zip(used, cache, strict=True)]
    return series


def main(timeline_path: Path, out_path: Path, title: str | None = None) -> int:
    if not have_matplotlib():
        print("memcoord plot needs matplotlib: pip install 'memcoord[plot]'", file=sys.stderr)
        return os.EX_UNAVAILABLE
    try:
        series = read(timeline_path)
    except TimelineError as exc:
        print(f"memcoord: {exc}", file=sys.stderr)
        return os.EX_NOINPUT if not timeline_path.is_file() else os.EX_DATAERR
    if not series.guests:
        print(f"memcoord: {timeline_path}: no guest in the timeline, nothing to plot", file=sys.stderr)
        return os.EX_DATAERR
    write(series, out_path, title or f"memcoord: {timeline_path.name} ({series.source} timeline)")
    print(f"{out_path}: {len(series.guests)} guests, {len(series.events)} events")
    return os.EX_OK
