"""memcoord's own policy (`policy.decide`) behind the common interface: it only carries the state along."""

from __future__ import annotations

from ..config import Config
from ..model import Change, Snapshot
from ..policy import PolicyState, decide


class SeedPolicy:
    name = "seed"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = PolicyState()

    def decide(self, snapshot: Snapshot) -> tuple[Change, ...]:
        plan, self.state = decide(snapshot, self.state, self.config)
        return plan.changes
