"""One hash per scenario, seed and profile of everything memcoord decided: to show a refactor changes no decision.

    .venv/bin/python bench/fingerprint.py [--seeds 1-4] > before.txt     # on one tree
    .venv/bin/python bench/fingerprint.py [--seeds 1-4] > after.txt      # on the other; diff the two

Runs every scenario of scenarios/ through the daemon's own tick (`step.step`, as `bench/compare.py` does), with the
default config and the production profile, and hashes every plan (changes with their reasons, classes, budget,
notes, bands, what was refused and left unmet) and every policy state, in order. A line differs when any decision
of that run does; its last column is the run's OOM kills.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import memcoord.core.step as step_module
from memcoord.core.config import Config
from memcoord.sim.run import run
from memcoord.sim.scenario import Scenario, load_scenario

if not __package__:  # run as a file (python bench/...py): the repository root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.compare import prod_config

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


@contextmanager
def _hashing_decisions(digest: Any) -> Iterator[None]:
    """Every decision the loop makes meanwhile, fed to digest."""
    decide = step_module.decide

    def hashed(snapshot, state, config):  # type: ignore[no-untyped-def]
        plan, new_state = decide(snapshot, state, config)
        fields = (plan.changes, sorted(plan.classes.items()), plan.host_headroom_kib, plan.notes, plan.bands,
                  plan.refused, plan.unmet_kib, plan.host_deficit_kib, plan.relief_shortfall_kib,
                  new_state)  # fmt: skip
        digest.update(repr(fields).encode())
        return plan, new_state

    step_module.decide = hashed
    try:
        yield
    finally:
        step_module.decide = decide


def fingerprint(scenario: Scenario, config: Config) -> tuple[str, int]:
    """The hash of every decision of one run, and its OOM kills."""
    digest = hashlib.sha256()
    with _hashing_decisions(digest):
        report = run(scenario, config)
    return digest.hexdigest()[:16], sum(g.oom_kills for g in report.guests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-4", help="FIRST-LAST (default 1-4)")
    args = parser.parse_args(argv)
    first, _, last = args.seeds.partition("-")
    seeds = range(int(first), int(last or first) + 1)
    profiles = {"default": Config(), "prod": prod_config(Config())}
    for path in sorted(SCENARIOS.glob("*.toml")):
        scenario = load_scenario(path)
        for profile, config in profiles.items():
            for seed in seeds:
                digest, kills = fingerprint(scenario.model_copy(update={"seed": seed}), config)
                print(f"{path.stem} {profile} {seed} {digest} {kills}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
