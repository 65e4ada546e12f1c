"""memcoord's own policy (`policy.decide`) behind the benchmarks' interface: it carries the state along.

The simulator does not run this wrapper: it runs `policy.decide` through `step.step`, which records only the
changes the hypervisor accepted. bench/scale.py times `decide` through it.
"""

from __future__ import annotations

from memcoord.core.config import Config
from memcoord.core.model import Change, Snapshot
from memcoord.core.policy import PolicyState, applied, decide


class MemcoordPolicy:
    name = "memcoord"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = PolicyState()

    def decide(self, snapshot: Snapshot) -> tuple[Change, ...]:
        plan, state = decide(snapshot, self.state, self.config)
        # Its callers apply every change (the simulated hypervisor accepts them: they are within [floor, max]).
        self.state = applied(state, plan.changes, snapshot.taken_at_s)
        return plan.changes
