"""Why each OOM kill of a memcoord run happened: the guest, the time, and what the policy saw and did before it.

    .venv/bin/python bench/kills.py scenarios/fleet-50.toml [--profile prod] [--ticks 6] [--config FILE]
    .venv/bin/python bench/kills.py scenarios/fleet-50.toml --seeds 1-12    # kills and time below guard per seed

Runs the scenario through the daemon's own tick (`step.step`) on the simulator, as `bench/compare.py` does
(without memcoord's libvirt hook: on a scenario with `host.make_room` the run differs from compare's), and for
each kill prints the ticks before it. Per tick, for the host: its available memory above the guard, the budget
before the plan (`policy.host_headroom_kib`), what the guard held for grants not yet backed (available - guard -
budget), and what guests backed anew in the next LOOKAHEAD_S (QEMU's RSS growth, all guests: no less than what the
holders touched); for the killed guest: its true size and use (the simulator's), the policy's view of it (stats age,
class, ramp, band) and the changes made to it, with their rule. First, every change planned in the run, counted by
rule, with the memory each rule moved.

With --seeds, the same scenario drawn with each seed instead (`sim.run.run`, as `bench/compare.py` runs it): its
kills and seconds below the guard per seed, for both profiles and the peers. One seed's count moves by a few kills
with any change to who gets memory when; a change to the model should be judged on many.

Last, the scenario's demand against the host (`check_demand`, page cache left out) with each guest's starving line
on top: where that does not fit, some guest must sit at or below its starving line, whatever a policy does.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from memcoord.core.config import Config
from memcoord.core.config import load as load_config
from memcoord.core.model import KIB_PER_MIB, Plan, Rule, Snapshot, mib_to_kib
from memcoord.core.policy import PolicyState, host_headroom_kib
from memcoord.core.step import MEMCOORD, step
from memcoord.sim.run import check_demand, run
from memcoord.sim.scenario import SIM_EPOCH_S, Scenario, build_host, load_scenario

if not __package__:  # run as a file (python bench/...py): the repository root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.compare import PROD_NAME, prod_config
from bench.policies import POLICIES

# How far ahead "backed anew" looks: a sample's age plus memcoord's lookahead (stats period + tick + balloon move)
# under the default config.
LOOKAHEAD_S = 4
# How far back the killed guest's own lowerings are summed: longer than the gaps between the shipped scenarios'
# bursts and sawtooth periods, so a lowering since the guest's last peak shows.
LOOKBACK_S = 60


@dataclass(frozen=True)
class Tick:
    t_s: float
    snapshot: Snapshot
    plan: Plan
    budget_kib: int  # before the plan
    guard_kib: int
    truth: dict[str, tuple[int, int, int]]  # per guest: balloon size, used, QEMU's backed pages (KiB)


@dataclass(frozen=True)
class Kill:
    t_s: float
    guest: str


def trace(scenario: Scenario, config: Config) -> tuple[list[Tick], list[Kill]]:
    """Run the scenario with memcoord; every tick as the policy saw it, and every kill."""
    hv = build_host(scenario)
    state = MEMCOORD.first_state(config)
    tick_every = max(1, round(config.loop.interval_s / scenario.step_s))
    ticks: list[Tick] = []
    kills: list[Kill] = []
    for i in range(max(1, round(scenario.duration_s / scenario.step_s))):
        if i % tick_every == 0:
            before: PolicyState = state
            done = step(hv, config, state)
            state = done.state
            resolved = config.for_host(done.snapshot.host.total_kib)
            truth = {g.name: (g.current_kib, g.used_kib, g.rss_kib) for g in hv.guests.values()}
            ticks.append(
                Tick(
                    done.snapshot.taken_at_s - SIM_EPOCH_S,
                    done.snapshot,
                    done.plan,
                    host_headroom_kib(done.snapshot, resolved, before),
                    mib_to_kib(resolved.host.min_available_mib),
                    truth,
                )
            )
        counts = {name: g.oom_kills for name, g in hv.guests.items()}
        hv.advance(scenario.step_s)
        kills += [Kill(hv.now_s - SIM_EPOCH_S, n) for n, g in hv.guests.items() if g.oom_kills > counts.get(n, 0)]
    return ticks, kills


def backed_anew_kib(ticks: list[Tick], i: int) -> int:
    """What guests' QEMUs backed beyond what they held at tick i, at its most over the next LOOKAHEAD_S."""
    now = ticks[i].truth
    later = [t.truth for t in ticks[i + 1 :] if t.t_s <= ticks[i].t_s + LOOKAHEAD_S]
    return sum(max([0, *(t[n][2] - rss for t in later if n in t)]) for n, (_, _, rss) in now.items())


def lowerings_mib(ticks: list[Tick], kill: Kill) -> dict[str, int]:
    """What memcoord took from the killed guest in the LOOKBACK_S before its kill, MiB by rule."""
    out: dict[str, int] = {}
    for t in ticks:
        if kill.t_s - LOOKBACK_S <= t.t_s <= kill.t_s:
            for c in t.plan.changes:
                if c.domain == kill.guest and c.to_kib < c.from_kib:
                    rule = c.why.rule.value if c.why else c.action.value
                    out[rule] = out.get(rule, 0) + (c.from_kib - c.to_kib) // KIB_PER_MIB
    return out


def describe(ticks: list[Tick], kills: list[Kill], n_ticks: int) -> list[str]:
    def mib(kib: int) -> str:
        return f"{kib // KIB_PER_MIB}"

    out = []
    for kill in kills:
        out.append(f"KILL {kill.guest} at t={kill.t_s:.1f} s")
        taken = ", ".join(f"{rule} {n}" for rule, n in sorted(lowerings_mib(ticks, kill).items()))
        out.append(f"  taken from it in the {LOOKBACK_S} s before (MiB): {taken or 'nothing'}")
        for i, t in enumerate(ticks):
            if not kill.t_s - n_ticks <= t.t_s <= kill.t_s:
                continue
            above_kib = t.snapshot.host.available_kib - t.guard_kib
            held_kib = above_kib - t.snapshot.host.reserved_kib - t.budget_kib
            out.append(
                f"  t={t.t_s:5.1f} host: {mib(above_kib)} MiB above guard, budget {mib(t.budget_kib)}, "
                f"held {mib(held_kib)}, backed anew in {LOOKAHEAD_S} s {mib(backed_anew_kib(ticks, i))}"
            )
            dom = next((d for d in t.snapshot.domains if d.name == kill.guest), None)
            if dom is None or kill.guest not in t.truth:
                continue
            size_kib, used_kib, rss_kib = t.truth[kill.guest]
            band = t.plan.bands.get(kill.guest)
            age = f"{t.snapshot.taken_at_s - dom.last_update_s:.0f} s" if dom.last_update_s else "-"
            moves = [
                f"{c.why.rule.value if c.why else c.action.value} {mib(c.from_kib)}->{mib(c.to_kib)}"
                for c in t.plan.changes
                if c.domain == kill.guest
            ]
            ramp = next((c.why.ramp_kib_per_s for c in t.plan.changes if c.domain == kill.guest and c.why), None)
            out.append(
                f"    {kill.guest}: size {mib(size_kib)} used {mib(used_kib)} backed {mib(rss_kib)} | stats {age} old, "
                f"{t.plan.classes.get(kill.guest, '-')}"
                + (f", band {mib(band.low_kib)}..{mib(band.high_kib)}" if band else "")
                + (f", ramp {ramp / KIB_PER_MIB:.0f} MiB/s" if ramp else "")
                + f", unmet {mib(t.plan.unmet_kib.get(kill.guest, 0))} | {', '.join(moves) or 'not moved'}"
            )
    return out


def by_seed(scenario_path: Path, config: Config, seeds: range) -> list[str]:
    """Per run (memcoord's two profiles, the peers): kills and seconds below the guard for each seed, and totals;
    for memcoord, how many of the kills came to a guest that gave comfort in the LOOKBACK_S before."""
    scenario = load_scenario(scenario_path)
    runs = [("memcoord", config, MEMCOORD), (PROD_NAME, prod_config(config), MEMCOORD)]
    runs += [(name, config, loop) for name, loop in POLICIES.items() if loop is not MEMCOORD]
    out = []
    for name, cfg, loop in runs:
        reports = [run(scenario.model_copy(update={"seed": seed}), cfg, loop) for seed in seeds]
        kills = [r.oom_kills for r in reports]
        below_s = sum(r.host_below_guard_s for r in reports)
        line = f"{name:14s} kills {sum(kills):4d}  below guard {below_s:6.1f} s  per seed {kills}"
        if loop is MEMCOORD:
            gave = 0
            for seed in seeds:
                ticks, seed_kills = trace(scenario.model_copy(update={"seed": seed}), cfg)
                gave += sum(1 for k in seed_kills if Rule.COMFORT.value in lowerings_mib(ticks, k))
            line += f"; {gave} of them had given comfort in the {LOOKBACK_S} s before"
        out.append(line)
    return out


def seed_range(text: str) -> range:
    """--seeds FIRST-LAST (or one seed) as a range, for argparse."""
    first, _, last = text.partition("-")
    if not first.isdigit() or not (last or first).isdigit() or int(last or first) < int(first):
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST with FIRST <= LAST, got {text!r}")
    return range(int(first), int(last or first) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--config", type=Path, help="config file (default: built-in defaults)")
    parser.add_argument("--profile", choices=["default", "prod"], default="default")
    parser.add_argument("--ticks", type=int, default=6, help="seconds before each kill to show")
    parser.add_argument("--seeds", type=seed_range, help="FIRST-LAST: kills per seed instead of the kills' ticks")
    args = parser.parse_args(argv)
    config = load_config(args.config) if args.config else Config()
    if args.seeds:
        seeds = args.seeds
        print(f"{args.scenario.name}, seeds {seeds.start}-{seeds.stop - 1}:")
        print("\n".join(by_seed(args.scenario, config, seeds)))
        return 0
    if args.profile == "prod":
        config = prod_config(config)
    scenario = load_scenario(args.scenario)
    ticks, kills = trace(scenario, config)
    print(f"{args.scenario.name}, {args.profile} profile: {len(kills)} OOM kills")
    by_rule, moved_kib = Counter[str](), Counter[str]()
    for c in (c for t in ticks for c in t.plan.changes if c.why is not None):
        by_rule[c.why.rule.value] += 1
        moved_kib[c.why.rule.value] += abs(c.delta_kib)
    shown = [f"{rule} {n} ({moved_kib[rule] // KIB_PER_MIB} MiB)" for rule, n in by_rule.most_common()]
    print("changes planned, by rule (MiB moved): " + (", ".join(shown) or "none"))
    print("\n".join(describe(ticks, kills, args.ticks)))
    demand = check_demand(scenario, config.host.min_available_mib)
    # An upper bound where guests boot during the run (their lines count from the start).
    with_lines_mib = demand.peak_need_mib + sum(g.count for g in scenario.guests) * config.guest.starving_mib
    print(
        f"demand: peak need {demand.peak_need_mib:.0f} MiB, room above the guard {demand.room_mib:.0f} MiB; "
        f"with every guest's starving line ({config.guest.starving_mib} MiB each) {with_lines_mib:.0f} MiB at most"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
