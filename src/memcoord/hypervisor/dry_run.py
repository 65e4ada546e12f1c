"""Dry run as a view of the hypervisor: the targets memcoord would have set, laid over what the real one says.

`apply` sets nothing; it remembers each would-be target. `sample` returns the real snapshot with every guest
that has a would-be target shown at that size: its balloon size, and its free, usable and total memory moved
by the same amount (a balloon that shrinks a guest by X takes X of its free memory, which is what the guest
would then report), and the host's available memory raised by what a lowering would give back (what the guest
had touched above the target, as QEMU's RSS says). So the policy, unchanged, sees the host it would have made
and takes its next step from there: successive ticks show the path a guest would take and where it settles,
instead of the same first step every tick.

A would-be target is dropped when its guest is gone or when the real balloon moved since the target was set
(someone else resized the guest: the real size is the truth again). Nothing else is remembered: the guests'
real stats keep flowing, so a guest whose programs grow is still seen growing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from memcoord.core.model import ApplyResult, Change, DomainStats, HostStats, Snapshot
from memcoord.core.port import Hypervisor, Over


@dataclass(frozen=True, slots=True)
class WouldBe:
    """A target memcoord would have set, and the real balloon size when it decided it."""

    target_kib: int
    real_kib: int


def _shift(value_kib: int | None, delta_kib: int) -> int | None:
    return None if value_kib is None else max(0, value_kib + delta_kib)


def overlay(dom: DomainStats, target_kib: int) -> DomainStats:
    """The guest as it would report itself with its balloon at target_kib."""
    delta_kib = target_kib - dom.current_kib
    return replace(
        dom,
        current_kib=target_kib,
        unused_kib=_shift(dom.unused_kib, delta_kib),
        usable_kib=_shift(dom.usable_kib, delta_kib),
        available_kib=_shift(dom.available_kib, delta_kib),
    )


def released_kib(dom: DomainStats, target_kib: int) -> int:
    """Host memory a lowering to target_kib would give back: what the guest touched above the target."""
    touched_kib = dom.current_kib if dom.rss_kib is None else min(dom.rss_kib, dom.current_kib)
    return max(0, touched_kib - target_kib)


class DryRunHypervisor(Over):
    """The Hypervisor port over a real one, for dry run: reads pass through with the would-be targets laid over
    them, setMemory is never called. The stats period is set (Over's): reading stats is not acting on a guest,
    and dry run must see what the daemon would."""

    def __init__(self, real: Hypervisor) -> None:
        super().__init__(real)
        self.would_be: dict[str, WouldBe] = {}
        self._real_kib: dict[str, int] = {}  # each guest's real balloon size at the last sample
        # What the real hypervisor said at the last sample: metrics and status show the real sizes.
        self.last_real: Snapshot | None = None

    def sample(self, deadline_s: float | None = None, only: frozenset[str] | None = None) -> Snapshot:
        snapshot = self.last_real = self.real.sample(deadline_s) if only is None else self.real.sample(deadline_s, only)
        real = {d.name: d for d in snapshot.domains}
        self._real_kib = {d.name: d.current_kib for d in snapshot.domains}
        self.would_be = {
            name: wb for name, wb in self.would_be.items() if name in real and real[name].current_kib == wb.real_kib
        }
        if not self.would_be:
            return snapshot
        domains = tuple(
            overlay(d, self.would_be[d.name].target_kib) if d.name in self.would_be else d for d in snapshot.domains
        )
        freed_kib = sum(released_kib(real[n], wb.target_kib) for n, wb in self.would_be.items())
        host = HostStats(available_kib=snapshot.host.available_kib + freed_kib, total_kib=snapshot.host.total_kib)
        return replace(snapshot, host=host, domains=domains)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        results = []
        for change in changes:
            real_kib = self._real_kib.get(change.domain, change.from_kib)
            self.would_be[change.domain] = WouldBe(change.to_kib, real_kib)
            results.append(ApplyResult(change))
        return results
