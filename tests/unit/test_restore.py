"""`memcoord restore`'s pure parts: which guests, to what size, in what order through the host guard, and
whether a running memcoord would undo it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memcoord.admin.restore import RestoreError, Wanted, choose, daemon_managed, through_guard, wanted
from memcoord.core.config import Config, parse
from memcoord.core.model import DomainStats, HostStats, Snapshot, mib_to_kib
from memcoord.daemon.undo import Before

MIB = 1024


def dom(name: str, current_mib: int, max_mib: int = 2048) -> DomainStats:
    return DomainStats(name, mib_to_kib(current_mib), mib_to_kib(max_mib))


SNAP = Snapshot(
    HostStats(mib_to_kib(8000), mib_to_kib(16000)),
    (dom("b", 512), dom("a", 1024), dom("other", 700)),
    0.0,
)
CONFIG = parse('[libvirt]\ndomains = ["a", "b"]\n')


def test_no_names_means_every_managed_domain_by_name() -> None:
    assert [d.name for d in choose(SNAP, CONFIG, [])] == ["a", "b"]


def test_named_domains_in_the_order_named_managed_or_not() -> None:
    assert [d.name for d in choose(SNAP, CONFIG, ["other", "b", "other"])] == ["other", "b"]


def test_unknown_domains_are_all_named_and_nothing_is_chosen() -> None:
    with pytest.raises(RestoreError) as info:
        choose(SNAP, CONFIG, ["a", "typo1", "typo2"])
    assert info.value.exit_code == os.EX_NOINPUT
    message = str(info.value)
    assert "'typo1'" in message and "'typo2'" in message and "running with a balloon: a, b, other" in message


RECORD = Path("/var/lib/memcoord/restore-sizes.json")


@pytest.mark.parametrize(
    ("to_mib", "target_mib", "note"),
    [
        (1500, 1500, None),
        (4096, 2048, "--to 4096 MiB is above its maximum 2048 MiB: restoring to 2048 MiB"),
        (100, 512, "--to 100 MiB is below its current size 512 MiB: restore never lowers a guest, left as it is"),
        (40, 512, "--to 40 MiB is below its current size 512 MiB: restore never lowers a guest, left as it is"),
    ],
)
def test_targets_with_to_are_clamped(to_mib: int, target_mib: int, note: str | None) -> None:
    (w,) = wanted([dom("a", 512)], to_mib, False, {}, RECORD)
    assert w.target_kib == mib_to_kib(target_mib)
    assert w.notes == ((note,) if note else ())


def test_targets_are_the_size_before_memcoord_or_the_maximum() -> None:
    before = {"a": Before(mib_to_kib(1024), mib_to_kib(2048), 0.0), "high": Before(mib_to_kib(600), 0, 0.0)}
    doms = [dom("a", 512), dom("never", 512), dom("high", 900), dom("shrunk", 512, max_mib=768)]
    before["shrunk"] = Before(mib_to_kib(1024), mib_to_kib(2048), 0.0)  # its maximum lowered since
    a, never, high, shrunk = wanted(doms, None, False, before, RECORD)
    assert (a.target_kib, a.notes, a.what) == (mib_to_kib(1024), (), "its size before memcoord, 1024 MiB")
    assert never.target_kib == mib_to_kib(512) and never.notes == (
        f"no size before memcoord recorded for it in {RECORD} (memcoord never changed it): left as it is;"
        " --to-max restores it to its maximum",
    )
    # memcoord grew it for a need: restore does not take that back.
    assert high.target_kib == mib_to_kib(900) and "restore never lowers a guest" in high.notes[0]
    assert shrunk.target_kib == mib_to_kib(768) and "above its maximum 768 MiB" in shrunk.notes[0]
    # --to-max: the maximum, whatever the record says.
    assert [w.target_kib for w in wanted(doms, None, True, before, RECORD)] == [
        mib_to_kib(m) for m in (2048,) * 3 + (768,)
    ]


def test_growth_is_served_in_order_until_the_guard_then_short() -> None:
    wants = [
        Wanted(dom("first", 512), 2048 * MIB),
        Wanted(dom("second", 512), 2048 * MIB),
        Wanted(dom("third", 512), 1024 * MIB),
    ]
    steps = through_guard(wants, budget_kib=2000 * MIB + 300)
    assert [(s.name, s.to_kib // MIB, s.short_kib // MIB) for s in steps] == [
        ("first", 2048, 0),
        ("second", 976, 1072),  # the 464 MiB left, in whole MiB
        ("third", 512, 512),
    ]
    assert steps[0].change is not None and steps[0].change.reason == "memcoord restore to its maximum"
    assert steps[1].change is not None and "1072 MiB short: host guard" in steps[1].change.reason
    assert steps[2].change is None  # nothing to set


def test_restore_never_lowers_and_an_exact_fit_is_exact() -> None:
    steps = through_guard([Wanted(dom("big", 2000), 1000 * MIB), Wanted(dom("x", 512), 512 * MIB + 100)], 100)
    assert [(s.to_kib, s.short_kib) for s in steps] == [(2000 * MIB, 0), (512 * MIB + 100, 0)]
    assert steps[0].change is None  # a target below the current size sets nothing
    assert through_guard([Wanted(dom("x", 512), 1024 * MIB)], -5000)[0].to_kib == 512 * MIB


def view(
    uri: str = "qemu:///system",
    dry_run: bool = False,
    domains: tuple[tuple[str, bool], ...] = (),
    patterns: tuple[str, ...] = ("*",),
) -> dict:
    """The parts of a daemon's state file (state.py) that restore reads."""
    effective = {**Config().model_dump(mode="json"), "libvirt": {"uri": uri, "domains": list(patterns)}}
    return {
        "uri": uri,
        "dry_run": dry_run,
        "domains": [{"name": n, "managed": m} for n, m in domains],
        "config": {"effective": effective},
    }


@pytest.mark.parametrize(
    ("the_view", "expected"),
    [
        (view(domains=(("a", True), ("b", False))), ["a"]),  # b is excluded in the daemon's config
        (view(domains=(("a", True),), patterns=("a",)), ["a"]),  # b not seen yet, and its patterns skip it
        (view(domains=(("a", True),), patterns=("*",)), ["a", "b"]),  # b not seen yet, will be managed
        (view(dry_run=True, domains=(("a", True), ("b", True))), []),  # a dry run sets nothing
        (view(uri="qemu+ssh://elsewhere/system", domains=(("a", True),)), []),  # another host
        (None, ["a", "b"]),  # systemd says it runs, no state file: this config decides
    ],
)
def test_which_guests_a_running_daemon_would_move(the_view: dict | None, expected: list[str]) -> None:
    assert daemon_managed(the_view, ["a", "b"], CONFIG) == expected
