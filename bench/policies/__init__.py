"""The production peers memcoord is measured against, behind memcoord's policy interface (BalloonPolicy).

Benchmark material, not product: `memcoord run` and `memcoord simulate` never import these. bench/compare.py
and bench/scale.py pick them by name from POLICIES and hand the factory to memcoord.admin.simulate.run.
"""

from __future__ import annotations

from collections.abc import Callable

from memcoord.core.config import Config
from memcoord.sim.policies import BalloonPolicy, MemcoordPolicy

from .mom import MomPolicy
from .proxmox import ProxmoxPolicy

POLICIES: dict[str, Callable[[Config], BalloonPolicy]] = {
    "memcoord": MemcoordPolicy,
    "mom": MomPolicy,
    "proxmox": ProxmoxPolicy,
}


def factory(name: str) -> Callable[[Config], BalloonPolicy]:
    """A policy's factory by name; raises KeyError naming the known ones."""
    try:
        return POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None


def make(name: str, config: Config) -> BalloonPolicy:
    """A fresh policy by name."""
    return factory(name)(config)


__all__ = ["POLICIES", "MomPolicy", "ProxmoxPolicy", "factory", "make"]
