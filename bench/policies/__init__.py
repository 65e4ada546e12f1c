"""The production peers memcoord is measured against, and every policy bench/ runs by name.

Benchmark material, not product: `memcoord run` and `memcoord simulate` never import these. A peer keeps its own
state (moving averages, its own cadence) and answers `decide(snapshot) -> changes`; `PeerLoop` runs it through the
daemon's loop interface (`step.LoopPolicy`), which is all the simulator knows of a policy. bench/compare.py and
bench/scale.py pick policies by name from POLICIES, memcoord's own (`step.MEMCOORD`) among them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from memcoord.core.config import Config
from memcoord.core.model import ApplyResult, Change, Plan, Snapshot
from memcoord.core.step import MEMCOORD, LoopPolicy

from .mom import MomPolicy
from .proxmox import ProxmoxPolicy


class Peer(Protocol):
    name: str

    def decide(self, snapshot: Snapshot) -> tuple[Change, ...]:
        """The setMemory calls wanted this tick (possibly none); called once per tick."""
        ...


class PeerLoop:
    """A peer as a loop policy: its state is the peer object itself, built from the config for each run, and
    what was applied is nothing it records (it reads the balloons' sizes from the next snapshot)."""

    def __init__(self, factory: Callable[[Config], Peer], name: str) -> None:
        self.factory = factory
        self.name = name

    def first_state(self, config: Config) -> Peer:
        return self.factory(config)

    def decide(self, snapshot: Snapshot, state: Peer, config: Config) -> tuple[Plan, Peer]:
        return Plan(changes=state.decide(snapshot), classes={}, host_headroom_kib=0), state

    def applied(self, state: Peer, results: Sequence[ApplyResult], now_s: float) -> Peer:
        return state


POLICIES: dict[str, LoopPolicy] = {
    "memcoord": MEMCOORD,
    "mom": PeerLoop(MomPolicy, "mom"),
    "proxmox": PeerLoop(ProxmoxPolicy, "proxmox"),
}


def policy(name: str) -> LoopPolicy:
    """A policy by name; raises KeyError naming the known ones."""
    try:
        return POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None


__all__ = ["POLICIES", "MomPolicy", "Peer", "PeerLoop", "ProxmoxPolicy", "policy"]
