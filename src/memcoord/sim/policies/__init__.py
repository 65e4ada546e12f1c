"""The balloon-policy interface of the benchmarks: memcoord's own policy behind it, and room for the peers.

`policy.decide` is pure and takes its state in and out; other policies (the peers in bench/policies) keep
moving averages and their own cadence. One small interface holds both shapes: an object with
`decide(snapshot) -> changes` that keeps whatever state it needs; bench/scale.py times each policy through it.
The simulator runs memcoord's policy through the daemon's loop (`step.MEMCOORD`), as the daemon does, and a peer
through this interface (`sim_run._ChangesOnly`). The peers are benchmark material and live in bench/, so
nothing here imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from memcoord.core.config import Config
from memcoord.core.model import Change, Snapshot
from memcoord.sim.policies.memcoord import MemcoordPolicy


class BalloonPolicy(Protocol):
    name: str

    def decide(self, snapshot: Snapshot) -> tuple[Change, ...]:
        """The setMemory calls wanted this tick (possibly none); called once per service tick."""
        ...


PolicyFactory = Callable[[Config], BalloonPolicy]

POLICIES: dict[str, PolicyFactory] = {"memcoord": MemcoordPolicy}


def make(policy: str | PolicyFactory, config: Config) -> BalloonPolicy:
    """A fresh policy: memcoord's by name, or any other from its factory (bench/policies); KeyError names
    the known names."""
    if not isinstance(policy, str):
        return policy(config)
    try:
        factory = POLICIES[policy]
    except KeyError:
        raise KeyError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}") from None
    return factory(config)


__all__ = ["POLICIES", "BalloonPolicy", "MemcoordPolicy", "PolicyFactory", "make"]
