"""All policies x all shipped scenarios, one table and the goals: the numbers behind BENCHMARKS.md.

    .venv/bin/python bench/compare.py [--config etc/memcoord.toml] [--policies memcoord,mom,proxmox] [SCENARIO ...]

memcoord runs twice: `memcoord` with the config as given (default profile: idle memory goes back to the host)
and `memcoord-prod` with the production profile laid over it (PROD_PROFILE). Where a scenario has memcoord's
libvirt hook (`host.make_room`), `memcoord-prod-nohook` runs the same without it; where it models host PSI
(`host.thrash_below_mib`), `memcoord-prod-psi` runs it with `host.pressure_relief_pct` at PRESSURE_LINE_PCT: the
rows that show what make-room and the pressure signal change. Every run is deterministic (scenario seed,
simulated time), so the table is the same on any machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memcoord.admin.simulate import DemandCheck, RunReport, check_demand, format_table, load_scenario, run
from memcoord.core import config as config_mod
from memcoord.core.config import Config
from memcoord.sim.run import PRESSURE_LINE_PCT
from memcoord.sim.scenario import Scenario

if not __package__:  # run as a file (python bench/...py): the repository root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.policies import POLICIES, policy

ROOT = Path(__file__).resolve().parent.parent

# The production profile: idle guests are reclaimed only while the host is below a comfort target (or a guest
# starves). The target is the guard plus 2 GiB: room for one burst of the size these scenarios throw (<= 2 GiB)
# to be granted before anything has to be reclaimed, without tying it to host size (a percentage of a 512 GiB
# host would keep tens of GiB idle on purpose).
PROD_TARGET_ABOVE_GUARD_MIB = 2048
PROD_NAME = "memcoord-prod"
NOHOOK_NAME = "memcoord-prod-nohook"
PSI_NAME = "memcoord-prod-psi"

# The host may be below its guard at most this long at a time (the goal: relief within ~10 s).
RELIEF_LIMIT_S = 10.0

HEADERS = [
    "scenario",
    "policy",
    "OOM kills",
    "starving guest-s",
    "idle MiB (free+cache)",
    "host min avail MiB",
    "below guard s",
    "longest below guard s",
    f"host PSI > {PRESSURE_LINE_PCT:.0f} % s",
    "balloon changes",
    "relief mean s",
    "relief max s",
    "unrelieved",
]


# How long a guest keeps room for its recent peak in the production profile (README: "Profiles").
PROD_PEAK_HOLD_S = 600


def prod_profile(config: Config) -> dict[str, Any]:
    """The overlay that turns `config` into the production profile (README: "Profiles")."""
    return {
        "host": {"target_available_mib": config.host.min_available_mib + PROD_TARGET_ABOVE_GUARD_MIB},
        "guest": {"peak_hold_s": PROD_PEAK_HOLD_S},
    }


def prod_config(config: Config, overlay: dict[str, Any] | None = None) -> Config:
    """`config` with the production profile (and overlay on top)."""
    data = config.model_dump()
    for section, values in [*prod_profile(config).items(), *(overlay or {}).items()]:
        data[section] = {**data[section], **values}
    return Config.model_validate(data)


def variants(scenario: Scenario, config: Config) -> list[tuple[str, Scenario, Config]]:
    """The extra memcoord runs a scenario calls for: without its hook, with the pressure signal on."""
    out = []
    if scenario.host.make_room:
        no_hook = scenario.model_copy(update={"host": scenario.host.model_copy(update={"make_room": False})})
        out.append((NOHOOK_NAME, no_hook, prod_config(config)))
    if scenario.host.thrash_below_mib is not None:
        out.append((PSI_NAME, scenario, prod_config(config, {"host": {"pressure_relief_pct": PRESSURE_LINE_PCT}})))
    return out


def row(report: RunReport) -> list[object]:
    def opt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return [
        report.scenario,
        report.policy,
        report.oom_kills,
        f"{report.starving_guest_s:.1f}",
        f"{report.mean_idle_mib:.0f}",
        f"{report.host_min_available_mib:.0f}",
        f"{report.host_below_guard_s:.1f}",
        f"{report.host_longest_below_guard_s:.1f}",
        opt(report.host_pressure_s),
        report.balloon_changes,
        opt(report.mean_relief_s),
        opt(report.max_relief_s),
        sum(g.unrelieved for g in report.guests),
    ]


@dataclasses.dataclass(frozen=True)
class Goal:
    scenario: str
    policy: str
    goal: str
    ok: bool
    detail: str


def goals(scenario: str, reports: dict[str, RunReport], demand: DemandCheck) -> list[Goal]:
    """Issue 10's goals for each memcoord profile against MOM and Proxmox in one scenario."""
    peers = [reports[p] for p in ("mom", "proxmox") if p in reports]
    out = []
    for name in ("memcoord", PROD_NAME):
        mine = reports.get(name)
        if mine is None:
            continue
        if peers:
            best = min(p.oom_kills for p in peers)
            detail = f"{mine.oom_kills} vs {best}"
            out.append(Goal(scenario, name, "kills <= best peer", mine.oom_kills <= best, detail))
        if demand.fits:
            detail = f"{mine.oom_kills}; need {demand.peak_need_mib:.0f} <= {demand.room_mib:.0f} MiB"
            out.append(Goal(scenario, name, "0 kills (host had it)", mine.oom_kills == 0, detail))
        if peers:
            least = min(p.mean_idle_mib for p in peers)
            detail = f"{mine.mean_idle_mib:.0f} vs {least:.0f}"
            out.append(Goal(scenario, name, "less idle than peers", mine.mean_idle_mib < least, detail))
        longest = mine.host_longest_below_guard_s
        detail = f"{longest:.1f} s"
        out.append(Goal(scenario, name, f"below guard <= {RELIEF_LIMIT_S:.0f} s", longest <= RELIEF_LIMIT_S, detail))
    return out


GOAL_NAMES = [
    "kills <= best peer",
    "0 kills (host had it)",
    "less idle than peers",
    f"below guard <= {RELIEF_LIMIT_S:.0f} s",
]


def print_goals(all_goals: Sequence[Goal], demands: dict[str, DemandCheck], markdown: bool) -> None:
    """One row per scenario and memcoord profile, one column per goal: PASS/FAIL and the figures behind it."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for g in all_goals:
        cells.setdefault((g.scenario, g.policy), {})[g.goal] = f"{'PASS' if g.ok else 'FAIL'} ({g.detail})"
    headers = ["scenario", "host had the memory", "policy", *GOAL_NAMES]
    rows = [
        [scenario, "yes" if demands[scenario].fits else "no", policy, *(by_goal.get(n, "-") for n in GOAL_NAMES)]
        for (scenario, policy), by_goal in cells.items()
    ]
    print()
    print(f"Goals for each memcoord profile; relief limit {RELIEF_LIMIT_S:.0f} s:")
    print()
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "---|" * len(headers))
        for r in rows:
            print("| " + " | ".join(str(c) for c in r) + " |")
    else:
        print(format_table(headers, rows))
    passed = sum(g.ok for g in all_goals)
    print()
    print(f"{passed} of {len(all_goals)} goals pass.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", type=Path, help="scenario files (default: scenarios/*.toml)")
    parser.add_argument("--config", type=Path, help="config file (default: built-in defaults)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--no-goals", action="store_true", help="only the table")
    args = parser.parse_args(argv)

    config = config_mod.load(args.config) if args.config else Config()
    runs: list[tuple[str, str, Config]] = []  # label, policy name, config
    for name in args.policies.split(","):
        runs.append((name, name, config))
        if name == "memcoord":
            runs.append((PROD_NAME, name, prod_config(config)))
    paths = args.scenarios or sorted((ROOT / "scenarios").glob("*.toml"))
    rows = []
    all_goals: list[Goal] = []
    demands: dict[str, DemandCheck] = {}
    for path in paths:
        scenario = load_scenario(path)
        reports = {}
        planned = [(label, scenario, cfg, name) for label, name, cfg in runs]
        if any(name == "memcoord" for _label, name, _cfg in runs):
            planned += [(label, sc, cfg, "memcoord") for label, sc, cfg in variants(scenario, config)]
        for label, sc, cfg, name in planned:
            report = dataclasses.replace(run(sc, cfg, policy(name)), policy=label)
            reports[label] = report
            rows.append(row(report))
            print(f"  ran {scenario.name} / {label}", file=sys.stderr)
        demands[scenario.name] = check_demand(scenario, config.host.min_available_mib)
        all_goals.extend(goals(scenario.name, reports, demands[scenario.name]))
    if args.markdown:
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * len(HEADERS))
        for r in rows:
            print("| " + " | ".join(str(c) for c in r) + " |")
    else:
        print(format_table(HEADERS, rows))
    if not args.no_goals:
        print_goals(all_goals, demands, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
