"""bench/seeds.py: every scenario over many seeds, summed per scenario and profile, and what moved against a file."""

from __future__ import annotations

import json
from pathlib import Path

from bench import seeds

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "course-3-grow-free.toml"


def test_runs_are_summed_per_scenario_and_profile_and_only_what_moved_is_shown(tmp_path: Path) -> None:
    runs = [list(seeds.one_run((str(SCENARIO), seed, profile))) for seed in (1, 2) for profile in seeds.PROFILES]
    now = seeds.totals(runs)
    assert set(now) == {"course-3-grow-free default", "course-3-grow-free prod"}
    default = [r for r in runs if r[2] == "default"]
    kills, changes, below_s, longest_s, _idle, by_seed = now["course-3-grow-free default"]
    assert (kills, changes) == (sum(r[3] for r in default), sum(r[4] for r in default))
    assert by_seed == {str(r[1]): r[3] for r in default}
    assert changes > 0 and longest_s <= below_s
    # Against itself nothing moved: only the header and the totals.
    lines = seeds.report(now, now)
    assert len(lines) == 2 and lines[-1].startswith(f"all: kills {sum(r[0] for r in now.values())} ->")
    # One changed figure shows its line, the earlier figure first.
    before = dict(now)
    before["course-3-grow-free prod"] = (now["course-3-grow-free prod"][0] + 5, *now["course-3-grow-free prod"][1:])
    moved = seeds.report(now, before)
    assert len(moved) == 3 and moved[1].startswith("course-3-grow-free prod")
    assert f"{before['course-3-grow-free prod'][0]} -> {now['course-3-grow-free prod'][0]}" in moved[1]


def test_the_command_writes_totals_it_can_read_back(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "a.json"
    assert seeds.main(["--seeds", "1-1", "--scenario", str(SCENARIO), "--out", str(out), "--jobs", "1"]) == 0
    written = json.loads(out.read_text())
    assert set(written) == {"course-3-grow-free default", "course-3-grow-free prod"}
    assert seeds.main(["--seeds", "1-1", "--scenario", str(SCENARIO), "--against", str(out), "--jobs", "1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == (
        f"all: kills {sum(v[0] for v in written.values())} -> {sum(v[0] for v in written.values())}, "
        f"balloon changes {sum(v[1] for v in written.values())} -> {sum(v[1] for v in written.values())}"
    )


def test_kills_that_moved_are_judged_seed_by_seed() -> None:
    """The mean change a seed and its t, over the seeds both files ran: diffs 1, 1, 2 are +1.33 a seed with a
    standard error of 0.33."""
    assert seeds.paired({"1": 3, "2": 5, "3": 4, "9": 0}, {"1": 4, "2": 6, "3": 6}) == "+1.33 a seed over 3, t 4.0"
    assert seeds.paired({"1": 1, "2": 1}, {"1": 2, "2": 2}) == "+1.00 a seed over 2, t -"  # no spread: no t
    assert seeds.paired({"1": 1}, {"1": 2}) == ""  # one seed says nothing of the spread
    row = (7, 10, 0.0, 0.0, 100, {"1": 3, "2": 4})
    moved = seeds.report({"s default": row}, {"s default": (5, 10, 0.0, 0.0, 100, {"1": 2, "2": 3})})
    assert "5 -> 7" in moved[1] and moved[1].endswith("+1.00 a seed over 2, t -")
    # A file written before each seed's kills were kept: the totals only.
    assert "a seed" not in seeds.report({"s default": row}, {"s default": (5, 10, 0.0, 0.0, 100)})[1]
