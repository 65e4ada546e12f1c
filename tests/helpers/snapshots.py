"""Hand-made snapshots for the policy's tests: guests with given sizes and stats, seen once or twice."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from memcoord.core.config import Config
from memcoord.core.model import KIB_PER_MIB, Action, ApplyResult, Change, DomainStats, HostStats, Snapshot, mib_to_kib
from memcoord.core.policy import PolicyState, applied, decide

GIB_KIB = mib_to_kib(1024)
NOW_S = 10_000


def dom(
    name: str,
    current_mib: int,
    unused_mib: int | None,
    *,
    usable_mib: int | None = None,
    max_mib: int = 2048,
    last_s: int = NOW_S,
    rss_mib: int | None = None,
) -> DomainStats:
    """A guest; usable is unused unless given (no page cache). Unless given, QEMU backs all of it (rss is
    current plus the default 128 MiB overhead): a guest that touched all its memory once."""
    if usable_mib is None:
        usable_mib = unused_mib
    return DomainStats(
        name=name,
        current_kib=mib_to_kib(current_mib),
        max_kib=mib_to_kib(max_mib),
        unused_kib=None if unused_mib is None else mib_to_kib(unused_mib),
        usable_kib=None if usable_mib is None else mib_to_kib(usable_mib),
        rss_kib=mib_to_kib(current_mib + 128 if rss_mib is None else rss_mib),
        last_update_s=last_s if unused_mib is not None else None,
    )


def snap(*doms: DomainStats, available_mib: int = 16384, now_s: float = NOW_S) -> Snapshot:
    return Snapshot(HostStats(mib_to_kib(available_mib), 24 * GIB_KIB), tuple(doms), now_s)


def two_ticks(first: Snapshot, second: Snapshot, config: Config | None = None):
    """Decide on `first` to build history, then on `second`; returns the second plan."""
    config = config or Config()
    _plan, state = decide(first, PolicyState(), config)
    plan, _state = decide(second, state, config)
    return plan


def steady(*doms: DomainStats, available_mib: int = 16384, config: Config | None = None):
    """The same guests seen twice, one second apart, with unchanged stats."""
    later = tuple(bump(d) for d in doms)
    return two_ticks(
        snap(*doms, available_mib=available_mib, now_s=NOW_S),
        snap(*later, available_mib=available_mib, now_s=NOW_S + 1),
        config,
    )


def bump(d: DomainStats, seconds: int = 1) -> DomainStats:
    fields = {f: getattr(d, f) for f in DomainStats.__slots__}
    if d.last_update_s is not None:
        fields["last_update_s"] = d.last_update_s + seconds
    return DomainStats(**fields)


def by_name(plan):
    return {c.domain: c for c in plan.changes}


def accepted(changes: Iterable[Change]) -> list[ApplyResult]:
    """Each change as the hypervisor accepted it (what `policy.applied` is told of a tick where all went well)."""
    return [ApplyResult(c) for c in changes]


def tax_only(
    starving: dict[str, tuple[int, int, int]], ticks: int, config: Config | None = None
) -> tuple[dict[str, int], int]:
    """Twenty idle guests pay the idle tax while the host's budget is held from the first tick (g's untouched
    grant), so that the tax is all the starving guests get; starving: name -> (size, maximum, usable) in MiB, each
    using all it is given. What each got (only ever grown), and the tax paid, in MiB."""
    config = config or Config()
    held = {"g": mib_to_kib(100)}
    state, sizes_mib = PolicyState(granted_kib=held), {n: size for n, (size, _, _) in starving.items()}
    got_mib, paid_mib = dict.fromkeys(starving, 0), 0
    for tick in range(ticks):
        now_s = NOW_S + tick
        doms = [dom(f"i{n:02d}", 1024, 320, last_s=now_s) for n in range(20)]
        doms += [dom("g", 1024, 300, rss_mib=924 + 128, last_s=now_s)]
        doms += [dom(n, sizes_mib[n], usable, max_mib=m, last_s=now_s) for n, (_, m, usable) in starving.items()]
        plan, state = decide(snap(*doms, available_mib=1024 + 100, now_s=now_s), state, config)
        state = applied(state, accepted(plan.changes), now_s)
        state = replace(state, granted_kib=held)
        for c in plan.changes:
            if c.domain in got_mib:
                assert c.to_kib > c.from_kib, c
                got_mib[c.domain] += (c.to_kib - c.from_kib) // KIB_PER_MIB
                sizes_mib[c.domain] = c.to_kib // KIB_PER_MIB
            elif c.action is Action.TAX:
                paid_mib += (c.from_kib - c.to_kib) // KIB_PER_MIB
    return got_mib, paid_mib
