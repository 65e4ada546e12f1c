"""`memcoord simulate`: run a scenario file on the simulated hypervisor with memcoord's policy and the admin's config.

This is how an admin tunes thresholds before touching production: the same config file, the same loop and
policy code as the daemon, guests and workloads from a small TOML file, and a table of what would have
happened. A run is deterministic for a scenario (its seed) and a config.

The parts: `scenario` (the file's schema and the host it describes), `sim_run` (running it through the
daemon's loop and measuring), `sim_report` (the table). Their names are importable from here too.
"""

from __future__ import annotations

import os
from pathlib import Path

from memcoord.admin import plot
from memcoord.core.config import Config
from memcoord.sim.report import format_table, summary
from memcoord.sim.run import DemandCheck, GuestReport, RunReport, Timeline, check_demand, run
from memcoord.sim.scenario import SIM_EPOCH_S, Scenario, ScenarioError, build_host, load_scenario, parse_scenario

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
    "run",
    "summary",
]


def main(scenario_path: Path, config: Config, duration_s: float | None, plot_path: Path | None) -> int:
    """What `memcoord simulate` does once its arguments are parsed; returns the exit code."""
    import sys

    try:
        scenario = load_scenario(scenario_path)
    except ScenarioError as exc:
        print(f"memcoord: invalid scenario:\n{exc}", file=sys.stderr)
        return os.EX_DATAERR
    if plot_path is not None and not plot.have_matplotlib():
        print("memcoord: --plot needs matplotlib: pip install 'memcoord[plot]'", file=sys.stderr)
        return os.EX_UNAVAILABLE
    if config.loop.dry_run:
        print("note: loop.dry_run is ignored here; the simulation applies every plan", file=sys.stderr)
    report = run(scenario, config, duration_s=duration_s, record=plot_path is not None)
    print(summary(report))
    if plot_path is not None:
        plot.write(plot.from_simulation(report), plot_path, f"{report.scenario} - policy {report.policy}")
        print(f"timeline written to {plot_path}")
    return os.EX_OK
