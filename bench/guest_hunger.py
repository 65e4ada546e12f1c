"""Which guest-reported figures move when a real guest is short of memory while MemAvailable looks fine?

    flock /tmp/memcoord-lab.lock .venv/bin/python -m bench.guest_hunger [--phase-s 20]

Needs root and the lab's packages (`make deps`). One lab guest (`mchunger-<pid>-1`, 512 MiB, max 1024 MiB) with
the shared readonly disk (/dev/vda, 3 GiB of zeros) and a writable swap disk of its own (1 GiB), no memcoord: the
balloon stays where it is, so what moves is the guest's own doing. Phases, one after the other, each `--phase-s`:

  idle        nothing runs (the baseline of every counter)
  grow        a hog grows to 200 MiB at ~20 MiB/s and holds it (normal growth: MemAvailable falls with it)
  read-loop   `dd` re-reads the whole disk with read() (page cache recycled, no page faults)
  mmap-loop   a reader maps 800 MiB of the disk and touches a byte of every page, round after round (page-cache
              thrash through page faults: the LAB-NOTES case, 4 major faults in 73,000)
  cycle-read  a hog of 300 MiB writes every page again, round after round, while `dd` streams the disk: the
              anonymous memory fits, the page cache competes with it (does the guest swap while MemAvailable,
              which counts the cache, looks fine?)
  swap-cycle  a hog of 600 MiB (more than the guest's memory) writes every page again, round after round
              (swap thrash)

Per phase: the rate of each balloon counter (swap_in, swap_out in KiB/s; major_fault, minor_fault per s), the
lowest and mean MemAvailable (`balloon.usable`) and page cache (`balloon.disk_caches`), and, as the ground truth
the host cannot see, the guest kernel's own memory PSI (`some avg10` from /proc/pressure/memory, read over the
serial console at the phase's end) and the workload's progress (rounds done). Prints one table; RELIABILITY.md
("Guest hunger signals") keeps the numbers with this command.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass

from lab.lab import Lab, remove_orphans
from memcoord.core.model import kib_to_mib

PREFIX_ROOT = "mchunger"
GUEST_MIB = 512
MAX_MIB = 1024
COUNTERS = ("balloon.swap_in", "balloon.swap_out", "balloon.major_fault", "balloon.minor_fault")


@dataclass
class PhaseResult:
    name: str
    seconds: float
    rates: dict[str, float]
    usable_min_mib: float
    usable_mean_mib: float
    caches_mean_mib: float
    guest_psi_some_avg10: float | None
    rounds: int | None


def _guest_psi(lab: Lab) -> float | None:
    status, out = lab.run(1, "cat /proc/pressure/memory 2>/dev/null | head -1")
    m = re.search(r"avg10=([0-9.]+)", out)
    return float(m.group(1)) if status == 0 and m else None


def _rounds(lab: Lab, since_line: int) -> int | None:
    """The last "hog: round N" the workload printed since the phase began, None if it printed none."""
    found = [
        int(m.group(1))
        for line in lab.guest(1).console.lines()[since_line:]
        if (m := re.search(r"hog: round (\d+)", line))
    ]
    return found[-1] if found else None


def measure(lab: Lab, name: str, phase_s: float) -> PhaseResult:
    """Sample the guest's balloon stats once a second for phase_s (fresh samples only: last-update moved)."""
    console_from = len(lab.guest(1).console.lines())
    samples: list[dict[str, int]] = []
    last_update = None
    t0 = time.monotonic()
    while time.monotonic() - t0 < phase_s:
        s = lab.balloon_stats()[lab.guest(1).name]
        if s.get("balloon.last-update") != last_update:
            last_update = s.get("balloon.last-update")
            samples.append(s)
        time.sleep(1.0)
    first, last = samples[0], samples[-1]
    span_s = max(1, last["balloon.last-update"] - first["balloon.last-update"])
    rates = {k.removeprefix("balloon."): (last.get(k, 0) - first.get(k, 0)) / span_s for k in COUNTERS}
    usable = [kib_to_mib(s["balloon.usable"]) for s in samples if "balloon.usable" in s]
    caches = [kib_to_mib(s["balloon.disk_caches"]) for s in samples if "balloon.disk_caches" in s]
    return PhaseResult(
        name,
        span_s,
        rates,
        min(usable),
        sum(usable) / len(usable),
        sum(caches) / len(caches) if caches else float("nan"),
        _guest_psi(lab),
        _rounds(lab, console_from),
    )


def table(results: list[PhaseResult]) -> str:
    head = (
        f"{'phase':<11} {'s':>3} {'swap_in KiB/s':>13} {'swap_out KiB/s':>14} {'major/s':>8} {'minor/s':>8}"
        f" {'usable min':>10} {'mean':>5} {'cache':>5} {'guest PSI':>9} {'rounds':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        psi = "-" if r.guest_psi_some_avg10 is None else f"{r.guest_psi_some_avg10:.1f}"
        lines.append(
            f"{r.name:<11} {r.seconds:>3.0f} {r.rates['swap_in']:>13.0f} {r.rates['swap_out']:>14.0f}"
            f" {r.rates['major_fault']:>8.1f} {r.rates['minor_fault']:>8.0f} {r.usable_min_mib:>10.0f}"
            f" {r.usable_mean_mib:>5.0f} {r.caches_mean_mib:>5.0f} {psi:>9} {'-' if r.rounds is None else r.rounds:>6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.guest_hunger", description=__doc__.splitlines()[0])
    p.add_argument("--phase-s", type=float, default=20.0, help="seconds per phase (default 20)")
    args = p.parse_args(argv)
    remove_orphans(PREFIX_ROOT)
    results = []
    prefix = f"{PREFIX_ROOT}{os.getpid()}-"
    with Lab(prefix=prefix, n=1, max_mib=MAX_MIB, current_mib=GUEST_MIB, disk_guests=[1], swap_guests=[1]) as lab:
        results.append(measure(lab, "idle", args.phase_s))
        lab.start_hog(1, "hold", size_mib=200, page_us=200)
        results.append(measure(lab, "grow", args.phase_s))
        lab.stop_hog(1)
        time.sleep(3)
        reader = lab.read_disk(1, loop=True)
        results.append(measure(lab, "read-loop", args.phase_s))
        lab.stop_reading(1, reader)
        lab.run(1, "hog mapread /dev/vda 800 &")
        results.append(measure(lab, "mmap-loop", args.phase_s))
        lab.stop_hog(1)
        time.sleep(3)
        lab.run(1, "hog cycle 300 50 &")
        reader = lab.read_disk(1, loop=True)
        results.append(measure(lab, "cycle-read", args.phase_s))
        lab.stop_reading(1, reader)
        lab.stop_hog(1)
        time.sleep(3)
        lab.run(1, "hog cycle 600 50 &")
        results.append(measure(lab, "swap-cycle", args.phase_s))
        lab.stop_hog(1)
    print(f"guest {GUEST_MIB} MiB (max {MAX_MIB}), swap 1024 MiB, starving line 150 MiB (the shipped default)")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
