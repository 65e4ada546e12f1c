"""The hypervisor port: what the service needs from a hypervisor, with two adapters (libvirt and simulator)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from ..model import ApplyResult, Change, Snapshot


class HypervisorError(Exception):
    """The hypervisor cannot be reached or failed as a whole; the service logs once and retries."""


class Hypervisor(Protocol):
    def sample(self) -> Snapshot:
        """All running domains' balloon stats and the host's memory, in one call where the backend allows."""
        ...

    def ensure_stats_period(self, names: Iterable[str], period_s: int) -> list[str]:
        """Make the named domains report guest stats every period_s; returns one message per failure."""
        ...

    def apply(self, changes: Sequence[Change]) -> list[ApplyResult]:
        """Set each domain's balloon target; a failure is reported per change, never raised."""
        ...

    def close(self) -> None: ...


def connect(uri: str) -> Hypervisor:
    """The adapter for a URI: `sim:` runs a simulated host in real time, anything else is libvirt.

    `sim:///demo` (or any other sim: URI) is the built-in three-guest host; `sim:///PATH.toml` builds the host
    of a `memcoord simulate` scenario file, e.g. a hundred guests to measure a scrape, or a guest that stays
    starving (the Prometheus tests use both)."""
    if uri.startswith("sim:"):
        path = uri.removeprefix("sim://")
        if path.endswith(".toml"):
            from ..simulate import build_host, load_scenario

            return build_host(load_scenario(path), realtime=True)
        from .sim import demo_host

        return demo_host(realtime=True)
    from .libvirt import LibvirtHypervisor

    return LibvirtHypervisor(uri)
