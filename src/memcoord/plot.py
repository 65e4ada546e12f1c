"""`memcoord plot TIMELINE -o out.png`: actual and unused memory per guest over time, actions marked.

These two lines show whether memory went where it was needed, one panel per guest, and the host's available
memory against its guard at the bottom. matplotlib is an optional extra (`pip install memcoord[plot]`): a host that
only runs the daemon does not need it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .timeline import Series, TimelineError, read

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# How each kind of event is drawn: marker and colour. Unknown kinds (from the lab) get a vertical line.
MARKERS = {
    "grow": ("^", "tab:green"),
    "reclaim": ("v", "tab:blue"),
    "tax": ("x", "tab:purple"),
    "clamp": ("s", "tab:orange"),
    "relieve": ("v", "tab:red"),
}


def figure(series: Series, title: str | None = None) -> Figure:
    """One panel per guest (actual, unused, actions) and one for the host; lines carry labels tests can check."""
    from matplotlib.figure import Figure

    names = sorted(series.guests)
    panels = len(names) + (1 if series.host_t_s else 0)
    fig = Figure(figsize=(10, 2.2 * max(1, panels)), layout="constrained")
    axes = fig.subplots(max(1, panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=False):
        g = series.guests[name]
        ax.plot(g.t_s, [float("nan") if v is None else v for v in g.actual_mib], "-", label="actual")
        ax.plot(g.t_s, [float("nan") if v is None else v for v in g.unused_mib], "--", label="unused")
        for kind in sorted({e.kind for e in series.events if e.guest == name}):
            events = [e for e in series.events if e.guest == name and e.kind == kind]
            if kind in MARKERS and all(e.mib is not None for e in events):
                marker, colour = MARKERS[kind]
                ax.plot(
                    [e.t_s for e in events],
                    [e.mib for e in events],
                    linestyle="none",
                    marker=marker,
                    color=colour,
                    label=kind,
                )
            else:
                colour, style = ("red", "-") if kind == "oom_kill" else ("grey", ":")
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


def main(timeline_path: Path, out_path: Path, title: str | None = None) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
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
    figure(series, title or f"memcoord: {timeline_path.name} ({series.source} timeline)").savefig(out_path, dpi=90)
    print(f"{out_path}: {len(series.guests)} guests, {len(series.events)} events")
    return os.EX_OK
