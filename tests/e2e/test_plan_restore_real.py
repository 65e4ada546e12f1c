"""`memcoord plan` and `memcoord restore` on real QEMU guests through the real libvirt adapter.

plan: three guests of 1024 MiB max started at 512 MiB with no balloon stats period (libvirt's default: each
balloon driver reports once, at boot, while its balloon is still at the maximum). Guest 1 idles; guest 2 holds a
hog that leaves it ~100 MiB usable; guest 3 has no balloon device (`<memballoon model='none'/>`). With
--no-stats-period plan must leave guests 1 and 2 alone (their one report is old, or impossible) and change
nothing; by default it must set their stats period, say so, and decide on fresh samples: no figure larger than
the guest, no sample older than the daemon trusts, guest 2 grown, and still no setMemory. Guest 3 is shown as
not managed because it has no balloon.

restore: a guest started at 640 MiB of 1024 MiB; memcoord (the real daemon) reclaims it; the daemon is stopped
and started again and stopped; `memcoord restore` returns the guest to 640 MiB (its size before memcoord), not
to 1024, and forgets it; then `restore --to-max` under a guard that leaves ~256 MiB grows it by only that and
exits 75 naming what is missing. The second guest has no balloon: `memcoord status` shows it left alone with
the reason, and nothing touches it.

Each prints its numbers before asserting.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import tomli_w

from lab.coordinator import Memcoord, lab_config, memcoord_command
from lab.image import GuestImage
from lab.lab import Lab
from memcoord.admin.plan import NO_PERIOD
from memcoord.core.config import Config
from memcoord.daemon.undo import FILE_NAME
from memcoord.hypervisor.libvirt import balloon_period_s

pytestmark = pytest.mark.real

MAX_MIB = 1024
# Usable memory the hog leaves guest 2: below the shipped starving line (150 MiB).
HOG_LEAVES_MIB = 100
# balloon.current of an untouched guest moves by a page or two between samples; a setMemory moves it by far more.
STILL_MIB = 2
EX_TEMPFAIL = 75
# How old a sample the daemon (and so plan) trusts with the shipped config: 3 stats periods + 2 ticks.
TRUSTED_AGE_S = Config().stale_after_s


def _write_config(lab: Lab, path: Path, overrides: dict[str, Any] | None = None) -> Path:
    """The shipped config restricted to this lab, with a state file of its own."""
    config = lab_config(lab.domain_glob, {"status": {"path": str(path.parent / "state.json")}, **(overrides or {})})
    path.write_text(tomli_w.dumps(config))
    return path


def _memcoord(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*memcoord_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env={**os.environ, **(env or {})},
    )
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


def _mem_available_mib(lab: Lab, i: int) -> int:
    status, out = lab.run(i, "grep MemAvailable /proc/meminfo")
    m = re.search(r"MemAvailable:\s+(\d+) kB", out)
    assert status == 0 and m is not None, out
    return int(m.group(1)) // 1024


def test_plan_on_guests_without_a_stats_period(guest_image: GuestImage, lab_prefix: str, tmp_path: Path) -> None:
    with Lab(
        lab_prefix, n=3, max_mib=MAX_MIB, current_mib=512, image=guest_image, stats_period_s=0, no_balloon_guests=(3,)
    ) as lab:
        idle, hogged, bare = lab.names
        assert (_period(lab, 1), _period(lab, 2), _period(lab, 3)) == (0, 0, None)
        held = {n: {k: v for k, v in s.items() if k.startswith("balloon.")} for n, s in lab.balloon_stats().items()}
        print(f"the stats libvirt holds before plan (KiB; last-update: epoch s): {held}")
        lab.start_hog(2, "hold", size_mib=_mem_available_mib(lab, 2) - HOG_LEAVES_MIB, page_us=50)
        _wait(f"{hogged}'s hog holding", lambda: lab.guest(2).console.state.hog_state == "holding", 120)
        config = _write_config(lab, tmp_path / "memcoord.toml")
        before = _balloons_mib(lab)

        off = _memcoord("plan", "--json", "--no-stats-period", "--config", str(config))
        periods_after_off = (_period(lab, 1), _period(lab, 2))
        started_s = time.monotonic()
        on = _memcoord("plan", "--json", "--config", str(config))
        took_s = time.monotonic() - started_s
        text = _memcoord("plan", "--config", str(config))
        time.sleep(3)  # a setMemory would have moved a balloon by now
        after = _balloons_mib(lab)
        periods_after = (_period(lab, 1), _period(lab, 2))
        hog_state = lab.guest(2).console.state.hog_state

    assert off.returncode == 0 and on.returncode == 0 and text.returncode == 0, (off.stderr, on.stderr, text.stderr)
    left, plan = json.loads(off.stdout), json.loads(on.stdout)
    rows_off = {d["name"]: d for d in left["domains"]}
    rows = {d["name"]: d for d in plan["domains"]}
    print(f"plan took {took_s:.1f} s; balloons before {before}, after {after}; periods after {periods_after}")
    for name in (idle, hogged, bare):
        r = rows[name]
        print(
            f"{name}: {r['class']}, {r['current_kib'] // 1024} MiB, usable {r['usable_kib']}, age {r['stats_age_s']}"
            f" s, now {r['action']} -> {r['to_kib']}, settles {r['settled_kib']}: {r['why']}"
        )

    # --no-stats-period: the guests without a period are left alone, and nothing is set.
    assert left["stats_period_set"] == [] and periods_after_off == (0, 0)
    for name in (idle, hogged):
        r = rows_off[name]
        assert (r["class"], r["action"], r["usable_kib"]) == ("no-stats", None, None), r
        assert r["why"] == f"left alone: {NO_PERIOD}"

    # By default: the period is set on the two, and the plan decides on fresh, possible figures.
    assert plan["stats_period_set"] == [idle, hogged] and periods_after == (1, 1)
    assert plan["stats_period_s"] == 1 and took_s < 15
    for name in (idle, hogged):
        r = rows[name]
        assert r["class"] not in ("no-stats", "stale"), r
        assert 0 <= r["stats_age_s"] <= TRUSTED_AGE_S, r
        assert r["usable_kib"] <= r["current_kib"] and r["unused_kib"] <= r["current_kib"], r
    assert rows[idle]["settled_kib"] <= rows[idle]["current_kib"]
    h = rows[hogged]
    assert hog_state == "holding", "the hog must be alive through the plans"
    assert (h["class"], h["action"]) == ("starving", "grow") and h["to_kib"] > h["current_kib"]
    b = rows[bare]
    assert (b["managed"], b["action"]) == (False, None) and "no balloon device" in b["why"], b
    # The text form says the same per row (the period was set by the run before: no line about it now).
    lines = {line.split()[0]: line for line in text.stdout.splitlines() if line.split()}
    assert "grow ->" in lines[hogged] and "no balloon device" in lines[bare]
    # Nothing else changed: no balloon moved.
    for name in (idle, hogged, bare):
        assert abs(after[name] - before[name]) <= STILL_MIB, (name, before[name], after[name])


def test_restore_after_a_daemon_restart_returns_the_size_before_memcoord(
    guest_image: GuestImage, lab_prefix: str, tmp_path: Path
) -> None:
    start_mib = 640
    # Both daemons run in this directory: their state directory ($STATE_DIRECTORY, as systemd's StateDirectory=
    # gives the unit one), where the record of sizes before memcoord lives.
    state_dir = tmp_path / "daemon"
    state_dir.mkdir()
    env = {"STATE_DIRECTORY": str(state_dir)}
    record = state_dir / FILE_NAME
    with Lab(lab_prefix, n=2, max_mib=MAX_MIB, current_mib=start_mib, image=guest_image, no_balloon_guests=(2,)) as lab:
        guest, bare = lab.names
        cfg = lab_config(lab.domain_glob, {"status": {"path": str(tmp_path / "state.json")}})
        config = _write_config(lab, tmp_path / "memcoord.toml")
        bare_before = _balloons_mib(lab)[bare]
        with Memcoord(cfg, state_dir):
            _wait(f"{guest} reclaimed", lambda: _balloons_mib(lab)[guest] <= start_mib - 100, 60)
            status = _memcoord("status", "--config", str(config))
        reclaimed_mib = _balloons_mib(lab)[guest]
        recorded = json.loads(record.read_text())
        with Memcoord(cfg, state_dir):
            time.sleep(6)  # it may reclaim further: the size before memcoord stays the first one
        again = json.loads(record.read_text())
        lowest_mib = _balloons_mib(lab)[guest]
        back = _memcoord("restore", "--config", str(config), env=env)
        _wait(f"{guest} back at {start_mib} MiB", lambda: abs(_balloons_mib(lab)[guest] - start_mib) <= 4, 30)
        restored_mib = _balloons_mib(lab)[guest]
        forgotten = json.loads(record.read_text())

        guard_mib = psutil.virtual_memory().available // 2**20 - 256
        guarded = _write_config(lab, tmp_path / "guarded.toml", {"host": {"min_available_mib": guard_mib}})
        short = _memcoord("restore", guest, "--to-max", "--config", str(guarded), env=env)
        time.sleep(3)  # the balloon's move, if any
        guest_mib, bare_after = _balloons_mib(lab)[guest], _balloons_mib(lab)[bare]

    print(
        f"{guest}: {start_mib} -> {reclaimed_mib:.0f} MiB (first daemon) -> {lowest_mib:.0f} (second) -> restore "
        f"{restored_mib:.0f} -> --to-max under guard {guard_mib} MiB {guest_mib:.0f}; record {recorded}"
    )
    uri = "qemu:///system"
    # The size before memcoord was recorded by the first daemon and kept through the second.
    assert abs(recorded["hosts"][uri][guest]["size_kib"] - start_mib * 1024) <= 4 * 1024
    assert again["hosts"][uri] == recorded["hosts"][uri]
    assert bare not in recorded["hosts"][uri]
    # status: the balloonless guest left alone, with the reason.
    assert status.returncode == 0, status.stderr
    assert re.search(rf"^{bare}\s+unmanaged \(no-balloon\)", status.stdout, re.M), status.stdout
    assert f"{bare}: left alone, ballooning cannot help: no balloon device" in status.stdout
    # restore: back to its size before memcoord, not its maximum; and forgotten.
    assert back.returncode == 0, back.stderr
    m = re.search(rf"^{guest}: (\d+) MiB -> (\d+) MiB$", back.stdout, re.M)
    assert m is not None and abs(int(m.group(2)) - start_mib) <= 4, back.stdout
    assert f"(memcoord restore to its size before memcoord, {m.group(2)} MiB)" in back.stderr
    assert abs(restored_mib - start_mib) <= 4 and restored_mib < MAX_MIB - 100
    assert forgotten["hosts"] == {}
    # --to-max goes through the host guard as before.
    assert short.returncode == EX_TEMPFAIL, (short.stdout, short.stderr)
    budget_mib = int(re.search(rf"guard {guard_mib} MiB: (\d+) MiB to grow", short.stdout).group(1))
    # memcoord read the host a moment after this test did: other work on this host moves it by tens of MiB.
    assert 0 <= budget_mib <= 256 + 128, budget_mib
    m = re.search(
        rf"^{guest}: (\d+) MiB -> (\d+) MiB, (\d+) MiB short of {MAX_MIB} MiB \(host guard\)$", short.stdout, re.M
    )
    assert m is not None, short.stdout
    from_mib, to_mib, short_mib = map(int, m.groups())
    assert abs(to_mib - from_mib - budget_mib) <= 1 and abs(to_mib + short_mib - MAX_MIB) <= 1
    assert abs(guest_mib - to_mib) <= 4, (guest_mib, to_mib)
    # Nothing touched the guest without a balloon.
    assert bare_after == bare_before
