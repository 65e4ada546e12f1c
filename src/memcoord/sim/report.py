"""The text report of `memcoord simulate`: one row per guest, a total, and the host's line."""

from __future__ import annotations

from collections.abc import Sequence

from memcoord.sim.run import RunReport


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table: first column left, the rest right (they are numbers)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def _opt(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


MAX_GUEST_ROWS = 40


def summary(report: RunReport) -> str:
    """The per-guest table and the host line that `memcoord simulate` prints."""
    headers = [
        "guest",
        "max MiB",
        "peak used MiB",
        "peak size MiB",
        "final size MiB",
        "OOM kills",
        "starving s",
        "mean idle MiB",
        "mean cache MiB",
        "balloon changes",
        "max relief s",
    ]
    rows = [
        [
            g.name,
            f"{g.max_mib:.0f}",
            f"{g.peak_used_mib:.0f}",
            f"{g.peak_size_mib:.0f}",
            f"{g.final_size_mib:.0f}",
            g.oom_kills,
            f"{g.starving_s:.1f}",
            f"{g.mean_idle_mib(report.duration_s):.0f}",
            f"{g.mean_cache_mib(report.duration_s):.0f}",
            g.balloon_changes,
            _opt(max(g.relief_s) if g.relief_s else None),
        ]
        for g in report.guests
    ]
    hidden = 0
    if len(rows) > MAX_GUEST_ROWS:
        hidden = len(rows) - MAX_GUEST_ROWS
        rows = rows[:MAX_GUEST_ROWS]
    rows.append(
        [
            "TOTAL",
            "",
            "",
            "",
            "",
            report.oom_kills,
            f"{report.starving_guest_s:.1f}",
            f"{report.mean_idle_mib:.0f}",
            f"{report.mean_cache_mib:.0f}",
            report.balloon_changes,
            _opt(report.max_relief_s),
        ]
    )
    lines = [
        f"scenario {report.scenario}: policy {report.policy}, {report.duration_s:.0f} s simulated",
        format_table(headers, rows),
    ]
    if hidden:
        lines.append(f"({hidden} more guests not shown; TOTAL counts all of them)")
    lines.append(
        f"host: total {report.host_total_mib:.0f} MiB, minimum available {report.host_min_available_mib:.0f} MiB"
        f" at t={report.host_min_at_s:.1f} s; below its {report.host_guard_mib:.0f} MiB guard"
        f" {report.host_below_guard_s:.1f} s, longest {report.host_longest_below_guard_s:.1f} s"
    )
    lines.append(
        f"idle = free + page cache (held, not used by programs); starving = idle <= {report.starving_mib} MiB while"
        " below max; relief = length of a starving spell"
    )
    return "\n".join(lines)
