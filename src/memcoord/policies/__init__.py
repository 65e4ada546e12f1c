"""Balloon policies side by side: memcoord's own policy and the production peers it is measured against.

`policy.decide` is pure and takes its state in and out; MOM and Proxmox keep moving averages and their own
10 s cadence. One small interface holds both shapes: an object with `decide(snapshot) -> changes` that keeps
whatever state it needs. The simulator and the benchmarks only ever see this interface.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..config import Config
from ..model import Change, Snapshot
from .memcoord import MemcoordPolicy
from .mom import MomPolicy
from .proxmox import ProxmoxPolicy


class BalloonPolicy(Protocol):
    name: str

    def decide(self, snapshot: Snapshot) -> tuple[Change, ...]:
        """The setMemory calls wanted this tick (possibly none); called once per service tick."""
        ...


POLICIES: dict[str, Callable[[Config], BalloonPolicy]] = {
    "memcoord": MemcoordPolicy,
    "mom": MomPolicy,
    "proxmox": ProxmoxPolicy,
}


def make(name: str, config: Config) -> BalloonPolicy:
    """A fresh policy by name; raises KeyError naming the known ones."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
    return factory(config)


__all__ = ["POLICIES", "BalloonPolicy", "MemcoordPolicy", "MomPolicy", "ProxmoxPolicy", "make"]
