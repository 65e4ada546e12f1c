"""All policies x all shipped scenarios, one table: the numbers behind BENCHMARKS.md.

    .venv/bin/python bench/compare.py [--config etc/memcoord.toml] [--policies seed,mom,proxmox] [SCENARIO ...]

Every run is deterministic (scenario seed, simulated time), so the table is the same on any machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from memcoord import config as config_mod
from memcoord.policies import POLICIES
from memcoord.simulate import RunReport, format_table, load_scenario, run

ROOT = Path(__file__).resolve().parent.parent
HEADERS = [
    "scenario",
    "policy",
    "OOM kills",
    "starving guest-s",
    "mean unused MiB",
    "host min avail MiB",
    "balloon changes",
    "relief mean s",
    "relief max s",
    "unrelieved",
]


def row(report: RunReport) -> list[object]:
    def opt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return [
        report.scenario,
        report.policy,
        report.oom_kills,
        f"{report.starving_guest_s:.1f}",
        f"{report.mean_unused_mib:.0f}",
        f"{report.host_min_available_mib:.0f}",
        report.balloon_changes,
        opt(report.mean_relief_s),
        opt(report.max_relief_s),
        sum(g.unrelieved for g in report.guests),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", type=Path, help="scenario files (default: scenarios/*.toml)")
    parser.add_argument("--config", type=Path, help="config file (default: built-in defaults)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)

    config = config_mod.load(args.config) if args.config else config_mod.Config()
    paths = args.scenarios or sorted((ROOT / "scenarios").glob("*.toml"))
    policies = args.policies.split(",")
    rows = []
    for path in paths:
        scenario = load_scenario(path)
        for name in policies:
            rows.append(row(run(scenario, config, name)))
            print(f"  ran {scenario.name} / {name}", file=sys.stderr)
    if args.markdown:
        print("| " + " | ".join(HEADERS) + " |")
        print("|" + "---|" * len(HEADERS))
        for r in rows:
            print("| " + " | ".join(str(c) for c in r) + " |")
    else:
        print(format_table(HEADERS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
