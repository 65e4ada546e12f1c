"""bench/fingerprint.py: one hash of every decision of a run, the same for the same decisions, another otherwise."""

from __future__ import annotations

from pathlib import Path

from bench.fingerprint import fingerprint
from memcoord.core.config import Config, parse
from memcoord.sim.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "course-1-one-hog.toml"


def test_the_same_decisions_hash_the_same_and_other_ones_do_not() -> None:
    scenario = load_scenario(SCENARIO)
    first = fingerprint(scenario, Config())
    assert fingerprint(scenario, Config()) == first
    # Smaller reclaim steps: the same run, other decisions.
    assert fingerprint(scenario, parse("[guest]\nreclaim_step_mib = 50\n"))[0] != first[0]
