"""`memcoord plan` and `memcoord restore` on real QEMU guests through the real libvirt adapter.

plan: three guests of 1024 MiB max at 768 MiB. Guest 1 idles with most of its memory unused; guest 2 holds a hog
that leaves it ~100 MiB usable; guest 3 has its balloon stats period switched off. The plan must show a reclaim
now and a lower settled size for guest 1, a grow for guest 2, "no stats: the stats period is set when memcoord
runs" for guest 3, and change nothing: the balloons stay where they were and guest 3's period stays off.

restore: a guest lowered by setMemory comes back to its maximum; with a host guard ~256 MiB below the host's
available memory, a second lowered guest grows only by what the guard allows and the command exits 75 naming
what is missing.

Each prints its numbers before asserting. No memcoord daemon runs: the guests move only if a command moves them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import psutil
import pytest
import tomli_w

from lab.coordinator import lab_config, memcoord_command
from lab.image import GuestImage
from lab.lab import Lab
from memcoord.admin.plan import NO_PERIOD
from memcoord.hypervisor.libvirt import balloon_period_s

pytestmark = pytest.mark.real

MAX_MIB = 1024
START_MIB = 768
# Usable memory the hog leaves guest 2: below the shipped starving line (150 MiB).
HOG_LEAVES_MIB = 100
# balloon.current of an untouched guest moves by a page or two between samples; a setMemory moves it by far more.
STILL_MIB = 2
EX_TEMPFAIL = 75


def _write_config(lab: Lab, path: Path, overrides: dict[str, Any] | None = None) -> Path:
    """The shipped config restricted to this lab, with a state file of its own (no daemon writes it)."""
    config = lab_config(lab.domain_glob, {"status": {"path": str(path.parent / "state.json")}, **(overrides or {})})
    path.write_text(tomli_w.dumps(config))
    return path


def _memcoord(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*memcoord_command(), *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    print(f"$ memcoord {' '.join(args)}  -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def _balloons_mib(lab: Lab) -> dict[str, float]:
    return {name: s["balloon.current"] / 1024 for name, s in lab.balloon_stats().items()}


def _wait(what: str, predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.5)


def _period(lab: Lab, i: int) -> int | None:
    return balloon_period_s(lab.guest(i).domain.XMLDesc(0))


def test_plan_shows_now_and_settled_and_changes_nothing(
    guest_image: GuestImage, lab_prefix: str, tmp_path: Path
) -> None:
    with Lab(lab_prefix, n=3, max_mib=MAX_MIB, current_mib=START_MIB, image=guest_image) as lab:
        idle, hogged, quiet = lab.names
        usable_mib = lab.balloon_stats()[hogged]["balloon.usable"] // 1024
        lab.start_hog(2, "hold", size_mib=usable_mib - HOG_LEAVES_MIB, page_us=50)
        _wait(f"{hogged}'s hog holding", lambda: lab.guest(2).console.state.hog_state == "holding", 120)
        lab.guest(3).domain.setMemoryStatsPeriod(0, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        # Stats of guest 3 go stale (the shipped config trusts them for 5 s); guest 2's show the hog.
        time.sleep(8)
        config = _write_config(lab, tmp_path / "memcoord.toml")
        before = _balloons_mib(lab)
        assert _period(lab, 3) == 0

        started_s = time.monotonic()
        proc = _memcoord("plan", "--json", "--config", str(config))
        took_s = time.monotonic() - started_s
        text = _memcoord("plan", "--config", str(config))
        time.sleep(3)  # a setMemory would have moved a balloon by now
        after = _balloons_mib(lab)
        period_after = _period(lab, 3)
        hog_state = lab.guest(2).console.state.hog_state

    assert proc.returncode == 0 and text.returncode == 0, (proc.stderr, text.stderr)
    plan = json.loads(proc.stdout)
    rows = {d["name"]: d for d in plan["domains"]}
    print(f"plan --json took {took_s:.1f} s; balloons before {before}, after {after}; guest 3 period {period_after}")
    for name in (idle, hogged, quiet):
        r = rows[name]
        print(
            f"{name}: {r['class']}, {r['current_kib'] // 1024} MiB, now {r['action']} -> {r['to_kib']}, settles "
            f"{r['settled_kib'] // 1024} MiB after {r['settles_in_s']} s: {r['why']}"
        )

    assert plan["uri"] == "qemu:///system" and plan["settled"]
    i = rows[idle]
    assert (i["managed"], i["class"], i["action"]) == (True, "wasteful", "reclaim")
    assert i["to_kib"] < i["current_kib"] and i["settled_kib"] < i["to_kib"] and i["settles_in_s"] > 0
    h = rows[hogged]
    assert hog_state == "holding", "the hog must be alive through the plan"
    assert (h["class"], h["action"]) == ("starving", "grow")
    assert h["to_kib"] > h["current_kib"] and h["settled_kib"] > h["current_kib"]
    q = rows[quiet]
    assert (q["class"], q["action"], q["why"]) == ("stale", None, NO_PERIOD)
    assert q["settled_kib"] == q["current_kib"] and q["settles_in_s"] == 0
    # The text form says the same per row.
    lines = {line.split()[0]: line for line in text.stdout.splitlines()[2:-1]}
    assert "reclaim ->" in lines[idle] and "grow ->" in lines[hogged] and NO_PERIOD in lines[quiet]
    # Nothing changed: no balloon moved, no stats period was set.
    for name in (idle, hogged, quiet):
        assert abs(after[name] - before[name]) <= STILL_MIB, (name, before[name], after[name])
    assert period_after == 0


def test_restore_to_the_maximum_and_through_the_guard(guest_image: GuestImage, lab_prefix: str, tmp_path: Path) -> None:
    lowered_mib = 384
    with Lab(lab_prefix, n=2, max_mib=MAX_MIB, current_mib=512, image=guest_image) as lab:
        first, second = lab.names
        for i in (1, 2):
            lab.guest(i).domain.setMemoryFlags(lowered_mib * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        _wait(
            "both balloons lowered",
            lambda: all(abs(v - lowered_mib) <= 4 for v in _balloons_mib(lab).values()),
            60,
        )
        config = _write_config(lab, tmp_path / "memcoord.toml")
        back = _memcoord("restore", first, "--config", str(config))
        _wait(f"{first} back at its maximum", lambda: _balloons_mib(lab)[first] >= MAX_MIB - 4, 30)
        first_mib = _balloons_mib(lab)[first]

        guard_mib = psutil.virtual_memory().available // 2**20 - 256
        guarded = _write_config(lab, tmp_path / "guarded.toml", {"host": {"min_available_mib": guard_mib}})
        short = _memcoord("restore", second, "--config", str(guarded))
        time.sleep(3)  # the balloon's move, if any
        second_mib = _balloons_mib(lab)[second]

    print(f"{first}: {lowered_mib} -> {first_mib:.0f} MiB; {second} (guard {guard_mib} MiB): -> {second_mib:.0f} MiB")
    assert back.returncode == 0, back.stderr
    assert back.stdout.splitlines()[1] == f"{first}: {lowered_mib} MiB -> {MAX_MIB} MiB"
    assert f"restore {first} {lowered_mib} -> {MAX_MIB} MiB (memcoord restore to its maximum)" in back.stderr
    assert first_mib >= MAX_MIB - 4

    assert short.returncode == EX_TEMPFAIL, (short.stdout, short.stderr)
    budget_mib = int(re.search(rf"guard {guard_mib} MiB: (\d+) MiB to grow", short.stdout).group(1))
    # memcoord read the host a moment after this test did: other work on this host moves it by tens of MiB.
    assert 0 <= budget_mib <= 256 + 128, budget_mib
    m = re.search(
        rf"^{second}: (\d+) MiB -> (\d+) MiB, (\d+) MiB short of {MAX_MIB} MiB \(host guard\)$", short.stdout, re.M
    )
    assert m is not None, short.stdout
    from_mib, to_mib, short_mib = map(int, m.groups())
    # Sizes are printed rounded to the MiB (the balloon's size is in KiB): sums hold to a MiB.
    assert abs(to_mib - from_mib - budget_mib) <= 1 and abs(to_mib + short_mib - MAX_MIB) <= 1
    assert f"{second} {short_mib} MiB short" in short.stderr
    assert abs(second_mib - to_mib) <= 4, (second_mib, to_mib)
