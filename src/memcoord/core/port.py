"""The hypervisor port: what the service needs from a hypervisor (the adapters, libvirt.py and sim.py, implement it).

Every call takes an optional `deadline_s` (time.monotonic() seconds): the tick's one deadline. An adapter gives
up on a call when it is reached and makes no new call after it, so that one tick always fits the watchdog
however many calls hang; what it skipped is decided and tried again next tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from memcoord.core.model import ApplyResult, Change, Snapshot

# ApplyResult.error of a change not attempted because the tick's deadline was spent: not a failure of the
# change (the service does not warn about it); the policy decides it again next tick.
SKIPPED_DEADLINE = "not attempted: the tick's deadline was spent"
# ApplyResult.error of a change to a domain shut down or undefined since the tick's sample: not a failure (an admin
# stopping a guest is no error of memcoord's, and the service does not report it); the next sample no longer
# lists the domain.
DOMAIN_GONE = "not sent: the domain is gone (shut down or undefined since the sample)"


class HypervisorError(Exception):
    """The hypervisor cannot be reached or failed as a whole; the service logs once and retries."""


class DeadlineSpent(HypervisorError):
    """The tick's deadline passed before this call could be made."""


class Hypervisor(Protocol):
    def sample(self, deadline_s: float | None = None, only: frozenset[str] | None = None) -> Snapshot:
        """All running domains' balloon stats and the host's memory, in one call where the backend allows.

        only: sample these running domains and no other (those it no longer finds are left out). The daemon asks
        for it while a libvirt hook waits for make-room: libvirtd holds the starting domain's lock while it runs
        the hook, and a call that lists every domain waits for that lock until the hook returns."""
        ...

    def ensure_stats_period(self, names: Iterable[str], period_s: int, deadline_s: float | None = None) -> list[str]:
        """Make the named domains report guest stats every period_s, retrying failures with backoff; returns
        one message per domain whose first attempt failed."""
        ...

    def stats_period_failures(self) -> Mapping[str, str]:
        """Domains whose stats period could not be set yet (being retried), with the last error."""
        ...

    def domain_names(self, deadline_s: float | None = None) -> set[str]:
        """Every domain the hypervisor knows, running or only defined (to check the config's domain names)."""
        ...

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        """Set each domain's balloon target; a failure is reported per change, never raised. Changes left when
        the deadline is spent get SKIPPED_DEADLINE. A call sent but not answered in time is reported with its
        outcome unknown (`ApplyResult(change, why, unknown=True)`), never as failed: it may still land."""
        ...

    def close(self) -> None: ...


class Over:
    """A view of a hypervisor over a real one (dry run's, the undo record's): the calls it does not change pass
    through to `real`; a subclass gives sample and apply their own meaning."""

    def __init__(self, real: Hypervisor) -> None:
        self.real = real

    def sample(self, deadline_s: float | None = None, only: frozenset[str] | None = None) -> Snapshot:
        return self.real.sample(deadline_s) if only is None else self.real.sample(deadline_s, only)

    def ensure_stats_period(self, names: Iterable[str], period_s: int, deadline_s: float | None = None) -> list[str]:
        return self.real.ensure_stats_period(names, period_s, deadline_s=deadline_s)

    def stats_period_failures(self) -> Mapping[str, str]:
        return self.real.stats_period_failures()

    def domain_names(self, deadline_s: float | None = None) -> set[str]:
        return self.real.domain_names(deadline_s=deadline_s)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        return self.real.apply(changes, deadline_s=deadline_s)

    def close(self) -> None:
        self.real.close()
