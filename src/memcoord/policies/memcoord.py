"""memcoord's own policy (`policy.decide`) behind the common interface: it carries the state along."""

from __future__ import annotations

from ..config import Config
from ..model import Change, Snapshot
from ..policy import PolicyState, applied, decide


class MemcoordPolicy:
    name = "memcoord"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = PolicyState()

    def decide(self, snapshot: Snapshot) -> tuple[Change, ...]:
        plan, state = decide(snapshot, self.state, self.config)
        # The simulator applies every change the policy makes (they are within [floor, max] by construction).
        self.state = applied(state, plan.changes, snapshot.taken_at_s)
        return plan.changes
