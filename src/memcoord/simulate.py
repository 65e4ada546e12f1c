"""`memcoord simulate`: run a scenario file on the simulated hypervisor with a policy and the admin's config.

This is how an admin tunes thresholds before touching production: the same config file, the same loop and
policy code as the daemon, guests and workloads from a small TOML file, and a table of what would have
happened. A run is deterministic for a scenario (its seed) and a config.

The parts: `scenario` (the file's schema and the host it describes), `sim_run` (running it through the
daemon's loop and measuring), `sim_report` (the table). Their names are importable from here too.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Config
from .scenario import SIM_EPOCH_S, Scenario, ScenarioError, build_host, load_scenario, parse_scenario
from .sim_report import format_table, summary
from .sim_run import DemandCheck, GuestReport, RunReport, Timeline, check_demand, run

__all__ = [
    "SIM_EPOCH_S",
    "DemandCheck",
    "GuestReport",
    "RunReport",
    "Scenario",
    "ScenarioError",
    "Timeline",
    "build_host",
    "check_demand",
    "format_table",
    "load_scenario",
    "main",
    "parse_scenario",
    "plot",
    "run",
    "summary",
]


def plot(report: RunReport, out: Path) -> None:
    """Draw the timeline (needs matplotlib: pip install 'memcoord[plot]')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = report.timeline
    if tl is None:
        raise ValueError("run(record=True) is needed for a plot")
    fig, (ax_guests, ax_host) = plt.subplots(2, 1, sharex=True, figsize=(10, 7), height_ratios=[3, 1])
    shown = list(tl.size_mib)[:12]
    for name in shown:
        (line,) = ax_guests.plot(tl.t_s, tl.size_mib[name], label=f"{name} size")
        ax_guests.plot(tl.t_s, tl.used_mib[name], linestyle="--", color=line.get_color(), label=f"{name} used")
        if any(tl.cache_mib[name]):
            used_and_cache = [u + c for u, c in zip(tl.used_mib[name], tl.cache_mib[name], strict=True)]
            ax_guests.plot(tl.t_s, used_and_cache, linestyle=":", color=line.get_color(), label=f"{name} used+cache")
    ax_guests.set_ylabel("MiB")
    ax_guests.set_title(f"{report.scenario} - policy {report.policy}")
    ax_guests.legend(fontsize="small", ncol=2)
    ax_host.plot(tl.t_s, tl.host_available_mib, color="black")
    ax_host.set_ylabel("host available MiB")
    ax_host.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(
    scenario_path: Path, config: Config, policy_name: str, duration_s: float | None, plot_path: Path | None
) -> int:
    """What `memcoord simulate` does once its arguments are parsed; returns the exit code."""
    import sys

    try:
        scenario = load_scenario(scenario_path)
    except ScenarioError as exc:
        print(f"memcoord: invalid scenario:\n{exc}", file=sys.stderr)
        return os.EX_DATAERR
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("memcoord: --plot needs matplotlib: pip install 'memcoord[plot]'", file=sys.stderr)
            return os.EX_UNAVAILABLE
    if config.loop.dry_run:
        print("note: loop.dry_run is ignored here; the simulation applies every plan", file=sys.stderr)
    report = run(scenario, config, policy_name, duration_s, record=plot_path is not None)
    print(summary(report))
    if plot_path is not None:
        plot(report, plot_path)
        print(f"timeline written to {plot_path}")
    return os.EX_OK
