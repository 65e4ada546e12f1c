"""Workload models for the simulated hypervisor: what a guest's programs (and the host's) ask for over time.

Each is a pure function of time (plus a seeded random stream where it says so), in KiB: the simulator asks
`demand_kib(t_s)` every step and tells the workload when the OOM killer hit it. A `FileReader` fills the page
cache; a `HostPressure` is a host process taking memory. Traces come from CSV files (`load_trace`).
"""

from __future__ import annotations

import csv
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from memcoord.core.model import mib_to_kib


class Workload(Protocol):
    def demand_kib(self, t_s: float) -> int:
        """Memory the guest's programs want at time t_s (on top of the kernel's)."""
        ...

    def killed(self, t_s: float) -> None:
        """The OOM killer hit the workload at t_s."""
        ...


@dataclass
class Idle:
    """A guest doing nothing but holding used_kib (a daemon or two)."""

    used_kib: int = 0

    def demand_kib(self, t_s: float) -> int:
        return self.used_kib

    def killed(self, t_s: float) -> None:
        self.used_kib = 0


@dataclass
class Hog:
    """Grows at rate_kib_per_s from start_s up to limit_kib (None: until killed), holds, then frees at free_s.

    Covers steady growth (no limit), grow-then-hold (limit) and grow-then-hold-then-free (limit and free_s).
    Like the lab's hog (lab/guest), once killed it stays dead: an OOM kill ends the program, nothing restarts it.
    """

    rate_kib_per_s: int
    start_s: float = 0.0
    limit_kib: int | None = None
    free_s: float | None = None
    _restart_s: float = 0.0

    def demand_kib(self, t_s: float) -> int:
        if t_s < self.start_s or (self.free_s is not None and t_s >= self.free_s):
            return 0
        grown_kib = int((t_s - max(self.start_s, self._restart_s)) * self.rate_kib_per_s)
        return grown_kib if self.limit_kib is None else min(grown_kib, self.limit_kib)

    def killed(self, t_s: float) -> None:
        self.free_s = t_s


@dataclass
class Burst:
    """base_kib always, plus peak_kib for length_s about every every_s seconds (jittered by a seeded RNG).

    A burst rises to its peak over ramp_s (0: a step), as a batch job or a cache warm-up does: the hardest
    shape for a policy that grows one step per tick. With ramp_max_s each burst draws its ramp between ramp_s
    and ramp_max_s. A killed burst ends; the next one comes on schedule.
    """

    base_kib: int
    peak_kib: int
    every_s: float
    length_s: float
    start_s: float = 0.0
    jitter: float = 0.0
    seed: int = 0
    ramp_s: float = 0.0
    ramp_max_s: float | None = None
    _starts_s: list[float] = field(default_factory=list)
    _ramps_s: list[float] = field(default_factory=list)
    _dead_until_s: float = -1.0

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self._rng = rng
        self._starts_s = [self.start_s]
        self._ramps_s = [self._draw_ramp_s()]

    def _draw_ramp_s(self) -> float:
        # Draw only when asked to, so that scenarios without ramp_max_s keep their burst times.
        if self.ramp_max_s is None:
            return self.ramp_s
        return self._rng.uniform(self.ramp_s, self.ramp_max_s)

    def _burst_index(self, t_s: float) -> int | None:
        """Which burst covers t_s, or None between bursts. Burst times are drawn lazily, in order."""
        while self._starts_s[-1] <= t_s:
            gap_s = self.every_s * (1 + self.jitter * (2 * self._rng.random() - 1))
            self._starts_s.append(self._starts_s[-1] + max(gap_s, self.length_s))
            self._ramps_s.append(self._draw_ramp_s())
        i = bisect_right(self._starts_s, t_s) - 1
        if i < 0 or t_s >= self._starts_s[i] + self.length_s:
            return None
        return i

    def demand_kib(self, t_s: float) -> int:
        i = self._burst_index(t_s)
        if i is None or t_s < self._dead_until_s:
            return self.base_kib
        start_s, ramp_s = self._starts_s[i], self._ramps_s[i]
        if ramp_s > 0 and t_s - start_s < ramp_s:
            return self.base_kib + int(self.peak_kib * (t_s - start_s) / ramp_s)
        return self.base_kib + self.peak_kib

    def killed(self, t_s: float) -> None:
        i = self._burst_index(t_s)
        self._dead_until_s = (self._starts_s[i] + self.length_s) if i is not None else t_s


@dataclass
class Sawtooth:
    """Ramps from low_kib to high_kib over period_s, drops back to low_kib, and again (a leaky cache flushed)."""

    low_kib: int
    high_kib: int
    period_s: float
    start_s: float = 0.0
    _dead_cycle: int = -1

    def demand_kib(self, t_s: float) -> int:
        if t_s < self.start_s:
            return self.low_kib
        cycle, into_s = divmod(t_s - self.start_s, self.period_s)
        if int(cycle) == self._dead_cycle:
            return self.low_kib
        return self.low_kib + int((self.high_kib - self.low_kib) * into_s / self.period_s)

    def killed(self, t_s: float) -> None:
        self._dead_cycle = int((t_s - self.start_s) // self.period_s) if t_s >= self.start_s else -1


@dataclass
class Trace:
    """Demand replayed from (t_s, demand_kib) points, stepwise (each value holds until the next point).

    Time is relative to start_s. A kill drops demand to zero for restart_after_s, then the trace resumes, as a
    service restarted by systemd would.
    """

    points: list[tuple[float, int]]
    start_s: float = 0.0
    restart_after_s: float = 5.0
    _dead_until_s: float = -1.0

    def __post_init__(self) -> None:
        self.points = sorted(self.points)
        self._times_s = [t for t, _ in self.points]

    def demand_kib(self, t_s: float) -> int:
        if t_s < self._dead_until_s:
            return 0
        i = bisect_right(self._times_s, t_s - self.start_s) - 1
        return self.points[i][1] if i >= 0 else 0

    def killed(self, t_s: float) -> None:
        self._dead_until_s = t_s + self.restart_after_s


class TraceError(ValueError):
    """A trace file cannot be read; the message names the file and line."""


def load_trace(path: Path | str) -> list[tuple[float, int]]:
    """Read a CSV of `t_s,demand_mib` rows (a header line is allowed) into (t_s, demand_kib) points."""
    path = Path(path)
    points: list[tuple[float, int]] = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or row[0].strip().startswith("#"):
                    continue
                if len(row) != 2:
                    raise TraceError(f"{path}:{lineno}: expected 2 columns t_s,demand_mib, got {len(row)}")
                try:
                    t_s, demand_mib = float(row[0]), float(row[1])
                except ValueError:
                    if lineno == 1:
                        continue  # header
                    raise TraceError(f"{path}:{lineno}: not numbers: {','.join(row)!r}") from None
                if demand_mib < 0:
                    raise TraceError(f"{path}:{lineno}: demand_mib must be >= 0, got {demand_mib}")
                points.append((t_s, mib_to_kib(demand_mib)))
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    if not points:
        raise TraceError(f"{path}: no data rows")
    return points


@dataclass
class FileReader:
    """A program reading a set of file_kib bytes of files at read_kib_per_s from start_s, over and over.

    What it reads goes into the page cache, up to the whole file set; evicted pages are read (cached) again at
    the same rate. Reading stops at stop_s (None: never); what is cached stays until something evicts it.
    """

    read_kib_per_s: int
    file_kib: int
    start_s: float = 0.0
    stop_s: float | None = None
    # The share of the cached pages the guest's MemAvailable (balloon.usable) counts; the rest it reports as used.
    available_pct: float = 100.0

    def reading(self, t_s: float) -> bool:
        return t_s >= self.start_s and (self.stop_s is None or t_s < self.stop_s)


@dataclass
class HostPressure:
    """A host process that takes used_kib, ramped linearly over ramp_s from start_s, and frees it all at end_s."""

    used_kib: int
    start_s: float
    ramp_s: float = 0.0
    end_s: float | None = None

    def used_at_kib(self, t_s: float) -> int:
        if t_s < self.start_s or (self.end_s is not None and t_s >= self.end_s):
            return 0
        if self.ramp_s > 0 and t_s - self.start_s < self.ramp_s:
            return int(self.used_kib * (t_s - self.start_s) / self.ramp_s)
        return self.used_kib
