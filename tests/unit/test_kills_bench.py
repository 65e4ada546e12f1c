"""bench/kills.py: each OOM kill of a memcoord run, found where the run counts it, with the ticks before it."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from bench.kills import by_seed, describe, main, trace
from memcoord.core.config import Config
from memcoord.sim.run import run
from memcoord.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]
# vm2 grows without bound to its 2048 MiB maximum: the one kill of this scenario, whatever the policy.
SCENARIO = ROOT / "scenarios" / "course-3-grow-free.toml"


def test_finds_the_kills_the_run_counts_and_shows_the_ticks_before() -> None:
    ticks, kills = trace(load_scenario(SCENARIO), Config())
    report = run(load_scenario(SCENARIO), Config())
    by_guest = {g.name: g.oom_kills for g in report.guests if g.oom_kills}
    assert by_guest, "the scenario no longer kills: pick another for this test"
    assert Counter(k.guest for k in kills) == by_guest
    lines = describe(ticks, kills, n_ticks=3)
    kill = kills[0]
    at = lines.index(f"KILL {kill.guest} at t={kill.t_s:.1f} s")
    assert lines[at + 1].startswith("  taken from it in the 60 s before (MiB): "), lines[at + 1]
    shown = lines[at + 2 : at + 8]
    # Three ticks before it, each with the host's figures and the guest's own line.
    assert sum(line.startswith("  t=") for line in shown) == 3, shown
    assert sum(line.startswith(f"    {kill.guest}: size ") for line in shown) == 3, shown


def test_by_seed_counts_the_runs_compare_makes() -> None:
    scenario = load_scenario(SCENARIO)
    lines = by_seed(SCENARIO, Config(), range(scenario.seed, scenario.seed + 1))
    kills = run(scenario, Config()).oom_kills
    assert lines[0].split()[:3] == ["memcoord", "kills", str(kills)], lines
    assert [line.split()[0] for line in lines] == ["memcoord", "memcoord-prod", "mom", "proxmox"]


@pytest.mark.parametrize("seeds", ["x", "5-2", "1-y"])
def test_a_bad_seed_range_is_refused_by_name(seeds: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(SCENARIO), "--seeds", seeds])
    assert exc.value.code == 2
    assert f"--seeds: expected FIRST-LAST with FIRST <= LAST, got {seeds!r}" in capsys.readouterr().err


def test_counts_every_change_planned_by_its_rule(capsys: pytest.CaptureFixture[str]) -> None:
    ticks, _kills = trace(load_scenario(SCENARIO), Config())
    changes = [c for t in ticks for c in t.plan.changes if c.why is not None]
    planned = Counter(c.why.rule.value for c in changes if c.why is not None)
    moved_mib = {
        rule: sum(abs(c.delta_kib) for c in changes if c.why and c.why.rule.value == rule) // 1024 for rule in planned
    }
    assert main([str(SCENARIO)]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    prefix = "changes planned, by rule (MiB moved): "
    assert line.startswith(prefix), line
    shown = {rule: (int(n), int(mib)) for rule, n, mib in re.findall(r"(\w+) (\d+) \((\d+) MiB\)", line)}
    assert shown == {rule: (n, moved_mib[rule]) for rule, n in planned.items()} and len(shown) > 1, (shown, planned)
