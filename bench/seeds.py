"""memcoord over every scenario drawn with many seeds, both profiles: kills, balloon changes, time below the guard.

    .venv/bin/python bench/seeds.py --seeds 1-48 --out before.json        # on one tree (~1 min on 2 cores)
    .venv/bin/python bench/seeds.py --seeds 1-48 --against before.json    # on the other: totals and what moved

One seed's count moves by a few kills with any change to who gets memory when (`bench/compare.py` runs one seed
per scenario): a change to the model is judged here, over many. Each run is the simulator's `run` through the
daemon's own tick, as `bench/compare.py` and `bench/kills.py --seeds` run memcoord; the peers are left out (their
counts do not move with memcoord's code). Per scenario and profile, summed over the seeds: OOM kills, balloon
changes, seconds below the guard, and the longest spell below it in any run (--out also keeps the idle MiB, the
mean over the seeds, and each seed's kills). With --against, each line shows the earlier file's figure -> this
tree's, and the lines where none of the four moved are left out; where the kills moved, the mean change in kills
a seed, seed by seed, and its t (the mean over its standard error): the same seed on both trees is the same
scenario, so a change is judged against how much one seed's count moves, not the totals' spread. A few kills in
a total over hundreds of seeds are chance; |t| above 2 seldom is.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if not __package__:  # run as a file (python bench/...py): the repository root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.compare import prod_config
from bench.kills import seed_range
from memcoord.core.config import Config
from memcoord.core.step import MEMCOORD
from memcoord.sim.run import run
from memcoord.sim.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
PROFILES = ("default", "prod")
# Per scenario and profile: kills, changes, below-guard s (sums), longest below-guard s (max), idle MiB (mean),
# and each seed's kills (by seed, as text: JSON's keys).
Row = tuple[int, int, float, float, float, dict[str, int]]


def one_run(job: tuple[str, int, str]) -> tuple[str, int, str, int, int, float, float, float]:
    """One scenario file drawn with one seed, run with one profile."""
    path, seed, profile = job
    scenario = load_scenario(Path(path)).model_copy(update={"seed": seed})
    config = Config() if profile == "default" else prod_config(Config())
    r = run(scenario, config, MEMCOORD)
    return (Path(path).stem, seed, profile, r.oom_kills, r.balloon_changes, r.host_below_guard_s,
            r.host_longest_below_guard_s, r.mean_idle_mib)  # fmt: skip


def totals(runs: list[list]) -> dict[str, Row]:  # type: ignore[type-arg]
    """Each "scenario profile" summed over its seeds."""
    by: dict[str, list[tuple]] = defaultdict(list)  # type: ignore[type-arg]
    for name, seed, profile, *figures in runs:
        by[f"{name} {profile}"].append((*figures, seed))
    return {
        key: (sum(r[0] for r in rs), sum(r[1] for r in rs), round(sum(r[2] for r in rs), 1),
              round(max(r[3] for r in rs), 1), round(sum(r[4] for r in rs) / len(rs)), {str(r[5]): r[0] for r in rs})
        for key, rs in sorted(by.items())
    }  # fmt: skip


def paired(before: dict[str, int], now: dict[str, int]) -> str:
    """The mean change in kills a seed over the seeds both ran (how many), and its t; "" when fewer than two.
    With many lines judged at once, one of them past |t| 2 may still be chance."""
    diffs = [now[seed] - before[seed] for seed in now.keys() & before.keys()]
    if len(diffs) < 2:
        return ""
    mean, spread = statistics.fmean(diffs), statistics.stdev(diffs)
    t = f"{mean / (spread / len(diffs) ** 0.5):.1f}" if spread else "-"
    return f"{mean:+.2f} a seed over {len(diffs)}, t {t}"


def report(now: dict[str, Row], before: dict[str, Row] | None) -> list[str]:
    head = f"{'scenario profile':34s} {'kills':>13s} {'changes':>17s} {'below guard s':>15s} {'longest s':>12s}"
    lines = [head + ("  kills, seed by seed" if before else "")]
    for key, row in now.items():
        was = before.get(key) if before else None
        if was is not None and tuple(was[:4]) == row[:4]:
            continue
        cells = [f"{w} -> {n}" if was is not None else f"{n}" for w, n in zip(was or row, row[:4], strict=False)]
        line = f"{key:34s} {cells[0]:>13s} {cells[1]:>17s} {cells[2]:>15s} {cells[3]:>12s}"
        if was is not None and was[0] != row[0] and len(was) > 5:
            line += f"  {paired(was[5], row[5])}"
        lines.append(line)
    kills, changes = sum(r[0] for r in now.values()), sum(r[1] for r in now.values())
    if before:
        lines.append(
            f"all: kills {sum(r[0] for r in before.values())} -> {kills}, "
            f"balloon changes {sum(r[1] for r in before.values())} -> {changes}"
        )
    else:
        lines.append(f"all: kills {kills}, balloon changes {changes}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=seed_range, default="1-48", help="FIRST-LAST (default 1-48)")
    parser.add_argument("--scenario", action="append", type=Path, help="only this scenario file (repeatable)")
    parser.add_argument("--out", type=Path, help="write the totals here (JSON), for a later --against")
    parser.add_argument("--against", type=Path, help="an earlier --out: show what moved")
    parser.add_argument("--jobs", type=int, default=2, help="processes (default 2; 1: in this one)")
    args = parser.parse_args(argv)
    seeds = args.seeds
    paths = args.scenario or sorted(SCENARIOS.glob("*.toml"))
    jobs = [(str(p), seed, profile) for p in paths for seed in seeds for profile in PROFILES]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            now = totals([list(r) for r in pool.map(one_run, jobs, chunksize=4)])
    else:
        now = totals([list(one_run(job)) for job in jobs])
    before = None
    if args.against:
        before = {k: tuple(v) for k, v in json.loads(args.against.read_text()).items()}
    print(f"seeds {seeds.start}-{seeds.stop - 1}, {len(paths)} scenarios, profiles {' and '.join(PROFILES)}")
    print("\n".join(report(now, before)))  # type: ignore[arg-type]
    if args.out:
        args.out.write_text(json.dumps(now, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
