"""Room held above the host guard for a VM about to start (make-room): pure data, shared by the daemon's socket
(daemon/room.py) and the simulator's VM starts (sim/run.py).

A reservation is memory the policy's budget leaves alone (`HostStats.reserved_kib`), so that idle guests are
relieved to make it and nobody grows into it. It ends after a bounded time; one made for a domain shrinks as that
domain's QEMU takes the memory (its RSS, measured on the host), so a booting guest is not counted twice: once in
what the host no longer has, once in what is still held for it.

What make-room could get on top of the host's budget is `freeable_kib`: the guests' memory above their low lines,
as the policy's bands put them (`policy.bands()`, or `Plan.bands`, the same), that QEMU backs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from memcoord.core.model import Band, Snapshot


@dataclass(frozen=True)
class Reservation:
    """want_kib held above the guard until until_s (the caller's clock), for a domain about to start or not."""

    want_kib: int
    domain: str | None
    until_s: float

    def held_kib(self, snapshot: Snapshot) -> int:
        """What is still held: all of it, or for a running domain what its QEMU has not taken yet (its RSS)."""
        if self.domain is not None:
            for dom in snapshot.domains:
                if dom.name == self.domain and dom.rss_kib is not None:
                    return max(0, self.want_kib - dom.rss_kib)
        return self.want_kib


def live(reservations: Iterable[Reservation], snapshot: Snapshot, now_s: float) -> list[Reservation]:
    """The reservations still holding something at now_s: not past their time, not taken by their domain."""
    return [r for r in reservations if now_s < r.until_s and r.held_kib(snapshot) > 0]


def reserved_kib(reservations: Iterable[Reservation], snapshot: Snapshot) -> int:
    """What the host holds above its guard for these reservations, on this snapshot."""
    return sum(r.held_kib(snapshot) for r in reservations)


def freeable_kib(snapshot: Snapshot, bands: Mapping[str, Band], overhead_kib: int) -> int:
    """What the host could get back now without taking any guest below its low line: each managed guest's
    balloon above its band's low, counted only as far as its QEMU backs it (RSS less overhead_kib, QEMU's own
    share; memory a guest never touched gives the host nothing when the balloon takes it). A guest without a
    band (unmanaged) gives nothing; one held where it is (no sane or fresh stats) has its low at its balloon."""
    total_kib = 0
    for dom in snapshot.domains:
        band = bands.get(dom.name)
        if band is None:
            continue
        above_kib = dom.current_kib - band.low_kib
        if dom.rss_kib is not None:
            above_kib = min(above_kib, dom.rss_kib - overhead_kib - band.low_kib)
        total_kib += max(0, above_kib)
    return total_kib


def floors_kib(bands: Mapping[str, Band]) -> int:
    """The sum of the managed guests' floors: memory memcoord never takes from them, whatever the host needs."""
    return sum(b.floor_kib for b in bands.values())
