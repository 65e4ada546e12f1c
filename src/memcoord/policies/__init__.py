"""The balloon-policy interface the simulator runs: memcoord's own policy behind it, and room for others.

`policy.decide` is pure and takes its state in and out; other policies (the peers in bench/policies) keep
moving averages and their own cadence. One small interface holds both shapes: an object with
`decide(snapshot) -> changes` that keeps whatever state it needs. The simulator only ever sees this interface.
The peers are benchmark material and live in bench/, so nothing here imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..config import Config
from ..model import Change, Snapshot
from .memcoord import MemcoordPolicy


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
