"""`memcoord simulate`: run a scenario file on the simulated hypervisor with a policy and the admin's config.

This is how an admin tunes thresholds before touching production: the same config file, the same policy code,
guests and workloads from a small TOML file, and a table of what would have happened. A run is deterministic
for a scenario (its seed) and a config.

The simulation advances in steps of `step_s` (default 0.1 s) and the policy runs every `loop.interval_s`, as
the service would; metrics are measured on the true guest state at every step, not on the stale stats the
policy sees.

A guest's memory is used (kernel + programs), page cache (reclaimable) or free. What a guest holds that its
programs do not use, free + cache (MemAvailable, "usable"), is what the metrics call idle memory, and a guest
starves when that falls to `guest.starving_mib`: a guest full of page cache is not hungry.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import Config, describe_error
from .hypervisor.sim import (
    KERNEL_USED_KIB,
    Burst,
    FileReader,
    Hog,
    HostPressure,
    Idle,
    Sawtooth,
    SimGuest,
    SimulatedHypervisor,
    Trace,
    TraceError,
    Workload,
    load_trace,
)
from .model import KIB_PER_MIB, mib_to_kib
from .policies import make as make_policy

SIM_EPOCH_S = 1_000_000.0


class ScenarioError(Exception):
    """A scenario file is wrong; the message names the file, the key and the value."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdleSpec(_Model):
    kind: Literal["idle"]
    used_mib: float = Field(0, ge=0)


class GrowSpec(_Model):
    """Steady growth (no limit), grow-then-hold (limit_mib) or grow-then-hold-then-free (limit_mib, free_s)."""

    kind: Literal["grow"]
    rate_mib_s: float = Field(gt=0)
    start_s: float = Field(0, ge=0)
    limit_mib: float | None = Field(None, gt=0)
    free_s: float | None = Field(None, ge=0)


class BurstSpec(_Model):
    kind: Literal["burst"]
    base_mib: float = Field(0, ge=0)
    peak_mib: float = Field(gt=0)
    every_s: float = Field(gt=0)
    length_s: float = Field(gt=0)
    start_s: float = Field(0, ge=0)
    jitter: float = Field(0, ge=0, le=1)
    ramp_s: float = Field(0, ge=0)
    # Each burst draws its ramp between ramp_s and ramp_max_s (seeded); absent: every ramp is ramp_s.
    ramp_max_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ramp_range(self) -> BurstSpec:
        if self.ramp_max_s is not None and self.ramp_max_s < self.ramp_s:
            raise ValueError(f"ramp_max_s ({self.ramp_max_s}) must be at least ramp_s ({self.ramp_s})")
        return self


class SawtoothSpec(_Model):
    kind: Literal["sawtooth"]
    low_mib: float = Field(0, ge=0)
    high_mib: float = Field(gt=0)
    period_s: float = Field(gt=0)
    start_s: float = Field(0, ge=0)

    @model_validator(mode="after")
    def _high_above_low(self) -> SawtoothSpec:
        if self.high_mib <= self.low_mib:
            raise ValueError(f"high_mib ({self.high_mib}) must be greater than low_mib ({self.low_mib})")
        return self


class TraceSpec(_Model):
    """Demand from a CSV file of t_s,demand_mib rows; a relative path is relative to the scenario file."""

    kind: Literal["trace"]
    file: str
    start_s: float = Field(0, ge=0)
    restart_after_s: float = Field(5, ge=0)


class CacheSpec(_Model):
    """A program reading files next to the workload: the page cache fills with up to file_mib of them."""

    read_mib_per_s: float = Field(gt=0)
    file_mib: float = Field(gt=0)
    start_s: float = Field(0, ge=0)
    stop_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _stop_after_start(self) -> CacheSpec:
        if self.stop_s is not None and self.stop_s <= self.start_s:
            raise ValueError(f"stop_s ({self.stop_s}) must be after start_s ({self.start_s})")
        return self


WorkloadSpec = Annotated[IdleSpec | GrowSpec | BurstSpec | SawtoothSpec | TraceSpec, Field(discriminator="kind")]


class GuestSpec(_Model):
    name: str = Field(min_length=1)
    max_mib: int = Field(gt=0)
    start_mib: int = Field(gt=0)
    count: int = Field(1, ge=1, le=100_000)
    # Spread each copy's workload start by up to this many seconds (seeded), so that copies do not move in step.
    stagger_s: float = Field(0, ge=0)
    balloon_stats: bool = True
    workload: WorkloadSpec = IdleSpec(kind="idle")
    cache: CacheSpec | None = None

    @model_validator(mode="after")
    def _start_within_max(self) -> GuestSpec:
        if self.start_mib > self.max_mib:
            raise ValueError(f"start_mib ({self.start_mib}) is above max_mib ({self.max_mib})")
        return self


class PressureSpec(_Model):
    """A host process: takes mib, ramped over ramp_s from start_s, and frees it at end_s (absent: never)."""

    start_s: float = Field(ge=0)
    mib: float = Field(gt=0)
    ramp_s: float = Field(0, ge=0)
    end_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _end_after_ramp(self) -> PressureSpec:
        if self.end_s is not None and self.end_s < self.start_s + self.ramp_s:
            raise ValueError(
                f"end_s ({self.end_s}) must be at or after start_s + ramp_s ({self.start_s + self.ramp_s})"
            )
        return self


class HostSpec(_Model):
    total_mib: int = Field(gt=0)
    # Memory the host itself and other processes hold, never available to guests.
    other_used_mib: int = Field(0, ge=0)
    # Memory host processes take and free during the run, on top of other_used_mib.
    pressure: tuple[PressureSpec, ...] = ()


class Scenario(_Model):
    name: str
    description: str = ""
    duration_s: float = Field(gt=0)
    seed: int = 0
    step_s: float = Field(0.1, gt=0, le=10)
    balloon_rate_mib_s: float = Field(500, gt=0)
    host: HostSpec
    guests: tuple[GuestSpec, ...] = Field(min_length=1)
    path: Path = Path("<string>")

    @model_validator(mode="after")
    def _unique_names(self) -> Scenario:
        names = [g.name for g in self.guests]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"guest names must be unique, repeated: {', '.join(dupes)}")
        return self


def _describe(path: Path | str, err: Any) -> str:
    loc = tuple(p for p in err["loc"] if not str(p).endswith("Spec"))  # drop union tags from the key path
    return describe_error(path, {**err, "loc": loc})


def parse_scenario(text: str, path: Path | str = "<string>") -> Scenario:
    """Validate scenario TOML; raise ScenarioError listing every problem (file, key, value), one per line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    if "path" in data:
        raise ScenarioError(f"{path}: path: unknown key")
    try:
        return Scenario.model_validate({**data, "path": Path(path)})
    except ValidationError as exc:
        raise ScenarioError("\n".join(_describe(path, err) for err in exc.errors())) from None


def load_scenario(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    scenario = parse_scenario(text, path)
    for i, guest in enumerate(scenario.guests):  # fail on a bad trace before the run, not in the middle of it
        if isinstance(guest.workload, TraceSpec):
            try:
                load_trace(_trace_path(scenario, guest.workload))
            except TraceError as exc:
                raise ScenarioError(f"{path}: guests.{i}.workload.file: {exc}") from None
    return scenario


def _trace_path(scenario: Scenario, spec: TraceSpec) -> Path:
    file = Path(spec.file)
    return file if file.is_absolute() else scenario.path.parent / file


def _workload(scenario: Scenario, spec: WorkloadSpec, offset_s: float, seed: int) -> Workload:
    t0_s = SIM_EPOCH_S + offset_s
    match spec:
        case IdleSpec():
            return Idle(mib_to_kib(spec.used_mib))
        case GrowSpec():
            return Hog(
                rate_kib_s=mib_to_kib(spec.rate_mib_s),
                start_s=t0_s + spec.start_s,
                limit_kib=None if spec.limit_mib is None else mib_to_kib(spec.limit_mib),
                free_s=None if spec.free_s is None else t0_s + spec.free_s,
            )
        case BurstSpec():
            return Burst(
                base_kib=mib_to_kib(spec.base_mib),
                peak_kib=mib_to_kib(spec.peak_mib),
                every_s=spec.every_s,
                length_s=spec.length_s,
                start_s=t0_s + spec.start_s,
                jitter=spec.jitter,
                seed=seed,
                ramp_s=spec.ramp_s,
                ramp_max_s=spec.ramp_max_s,
            )
        case SawtoothSpec():
            return Sawtooth(mib_to_kib(spec.low_mib), mib_to_kib(spec.high_mib), spec.period_s, t0_s + spec.start_s)
        case TraceSpec():
            points = load_trace(_trace_path(scenario, spec))
            return Trace(points, t0_s + spec.start_s, spec.restart_after_s)
    raise AssertionError(f"unhandled workload {spec!r}")


def _reader(spec: CacheSpec | None, offset_s: float) -> FileReader | None:
    if spec is None:
        return None
    t0_s = SIM_EPOCH_S + offset_s
    return FileReader(
        read_kib_per_s=mib_to_kib(spec.read_mib_per_s),
        file_kib=mib_to_kib(spec.file_mib),
        start_s=t0_s + spec.start_s,
        stop_s=None if spec.stop_s is None else t0_s + spec.stop_s,
    )


def build_host(scenario: Scenario, realtime: bool = False) -> SimulatedHypervisor:
    """The simulated host for a scenario; copies of a guest are named name-01, name-02, ..."""
    rng = random.Random(scenario.seed)
    guests = []
    for spec in scenario.guests:
        width = len(str(spec.count))
        for i in range(spec.count):
            name = spec.name if spec.count == 1 else f"{spec.name}-{i + 1:0{width}d}"
            offset_s = rng.uniform(0, spec.stagger_s) if spec.stagger_s else 0.0
            workload = _workload(scenario, spec.workload, offset_s, rng.randrange(2**32))
            guests.append(
                SimGuest(
                    name,
                    max_kib=mib_to_kib(spec.max_mib),
                    target_kib=mib_to_kib(spec.start_mib),
                    workload=workload,
                    reader=_reader(spec.cache, offset_s),
                    has_balloon_stats=spec.balloon_stats,
                )
            )
    return SimulatedHypervisor(
        guests,
        host_total_kib=mib_to_kib(scenario.host.total_mib),
        balloon_rate_kib_s=mib_to_kib(scenario.balloon_rate_mib_s),
        start_s=SIM_EPOCH_S,
        host_other_used_kib=mib_to_kib(scenario.host.other_used_mib),
        host_pressure=[
            HostPressure(
                used_kib=mib_to_kib(p.mib),
                start_s=SIM_EPOCH_S + p.start_s,
                ramp_s=p.ramp_s,
                end_s=None if p.end_s is None else SIM_EPOCH_S + p.end_s,
            )
            for p in scenario.host.pressure
        ],
        realtime=realtime,
    )


@dataclass(frozen=True)
class DemandCheck:
    """Could a perfect policy have avoided every OOM kill? Programs' demand only: page cache is reclaimable.

    fits: at every step, every guest's kernel + program demand fits its maximum, and all of them together plus
    the host's own use fit the host with min_available_mib to spare.
    """

    peak_need_mib: float
    room_mib: float
    over_max: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not self.over_max and self.peak_need_mib <= self.room_mib


def check_demand(scenario: Scenario, min_available_mib: float, duration_s: float | None = None) -> DemandCheck:
    """Replay the scenario's demand on a fresh host, without a policy and without kills."""
    duration_s = scenario.duration_s if duration_s is None else duration_s
    hv = build_host(scenario)
    guests = list(hv.guests.values())
    peak_need_kib = 0
    over_max: set[str] = set()
    for i in range(max(1, round(duration_s / scenario.step_s)) + 1):
        hv.now_s = SIM_EPOCH_S + i * scenario.step_s
        need_kib = hv.host_used_kib()
        for g in guests:
            want_kib = KERNEL_USED_KIB + g.workload.demand_kib(hv.now_s)
            if want_kib > g.max_kib:
                over_max.add(g.name)
            need_kib += want_kib
        peak_need_kib = max(peak_need_kib, need_kib)
    return DemandCheck(
        peak_need_mib=peak_need_kib / KIB_PER_MIB,
        room_mib=scenario.host.total_mib - min_available_mib,
        over_max=tuple(sorted(over_max)),
    )


# -- the run and its measurements ----------------------------------------------------------------------------


@dataclass
class GuestReport:
    """What happened to one guest; sizes in MiB, times in seconds."""

    name: str
    max_mib: float
    peak_used_mib: float = 0.0
    peak_size_mib: float = 0.0
    final_size_mib: float = 0.0
    oom_kills: int = 0
    starving_s: float = 0.0
    idle_mib_s: float = 0.0
    cache_mib_s: float = 0.0
    balloon_changes: int = 0
    relief_s: list[float] = field(default_factory=list)
    unrelieved: int = 0
    _starving_since_s: float | None = None

    def mean_idle_mib(self, duration_s: float) -> float:
        """Memory the guest held that its programs did not use (free + page cache), averaged over the run."""
        return self.idle_mib_s / duration_s if duration_s else 0.0

    def mean_cache_mib(self, duration_s: float) -> float:
        return self.cache_mib_s / duration_s if duration_s else 0.0


@dataclass
class Timeline:
    """Per tick, for --plot: time, and per guest size and used (MiB); host available (MiB)."""

    t_s: list[float] = field(default_factory=list)
    size_mib: dict[str, list[float]] = field(default_factory=dict)
    used_mib: dict[str, list[float]] = field(default_factory=dict)
    cache_mib: dict[str, list[float]] = field(default_factory=dict)
    host_available_mib: list[float] = field(default_factory=list)


@dataclass
class RunReport:
    scenario: str
    policy: str
    duration_s: float
    starving_mib: int
    host_total_mib: float
    host_min_available_mib: float
    host_min_at_s: float
    guests: list[GuestReport]
    timeline: Timeline | None = None
    host_guard_mib: float = 0.0
    # Seconds the host's available memory was below host.min_available_mib: in all, and the longest spell.
    host_below_guard_s: float = 0.0
    host_longest_below_guard_s: float = 0.0

    @property
    def oom_kills(self) -> int:
        return sum(g.oom_kills for g in self.guests)

    @property
    def starving_guest_s(self) -> float:
        return sum(g.starving_s for g in self.guests)

    @property
    def mean_idle_mib(self) -> float:
        """Memory all guests together held but their programs did not use (free + cache), averaged over the run."""
        return sum(g.mean_idle_mib(self.duration_s) for g in self.guests)

    @property
    def mean_cache_mib(self) -> float:
        return sum(g.mean_cache_mib(self.duration_s) for g in self.guests)

    @property
    def balloon_changes(self) -> int:
        return sum(g.balloon_changes for g in self.guests)

    @property
    def relief_times_s(self) -> list[float]:
        return [t for g in self.guests for t in g.relief_s]

    @property
    def mean_relief_s(self) -> float | None:
        times = self.relief_times_s
        return sum(times) / len(times) if times else None

    @property
    def max_relief_s(self) -> float | None:
        times = self.relief_times_s
        return max(times) if times else None


def run(
    scenario: Scenario,
    config: Config,
    policy_name: str = "memcoord",
    duration_s: float | None = None,
    record: bool = False,
) -> RunReport:
    """Run a scenario to the end and measure it.

    A guest counts as starving while the memory its programs could still get (free + page cache, the true
    MemAvailable) is at or below guest.starving_mib and it is below its maximum (at its maximum no balloon
    policy can help it). Each starving spell that ends is one relief time; a spell still open at the end counts
    as unrelieved and adds its length so far. The host is below its guard while its available memory is below
    host.min_available_mib.
    """
    duration_s = scenario.duration_s if duration_s is None else duration_s
    hv = build_host(scenario)
    policy = make_policy(policy_name, config)
    step_s = scenario.step_s
    n_steps = max(1, round(duration_s / step_s))
    tick_every = max(1, round(config.loop.interval_s / step_s))
    starving_kib = mib_to_kib(config.guest.starving_mib)
    reports = {g.name: GuestReport(g.name, g.max_kib / KIB_PER_MIB) for g in hv.guests.values()}
    timeline = Timeline() if record else None
    host_min_kib, host_min_at_s = hv.host_available_kib(), 0.0
    guard_kib = mib_to_kib(config.host.min_available_mib)
    below_guard_s = longest_below_s = 0.0
    below_since_s: float | None = None
    stats_set: set[str] = set()

    for i in range(n_steps):
        t_s = i * step_s
        if i % tick_every == 0:
            snapshot = hv.sample()
            managed = [d.name for d in snapshot.domains if config.manages(d.name, d.settings)]
            new = [n for n in managed if n not in stats_set]
            if new:
                hv.ensure_stats_period(new, config.loop.stats_period_s)
                stats_set.update(new)
            changes = policy.decide(snapshot)
            for result in hv.apply(changes):
                if result.ok:
                    reports[result.change.domain].balloon_changes += 1
            if timeline is not None:
                timeline.t_s.append(t_s)
                timeline.host_available_mib.append(hv.host_available_kib() / KIB_PER_MIB)
                for g in hv.guests.values():
                    timeline.size_mib.setdefault(g.name, []).append(g.actual_kib / KIB_PER_MIB)
                    timeline.used_mib.setdefault(g.name, []).append(g.used_kib / KIB_PER_MIB)
                    timeline.cache_mib.setdefault(g.name, []).append(g.cache_kib / KIB_PER_MIB)
        hv.advance(step_s)
        now_s = t_s + step_s
        for g in hv.guests.values():
            rep = reports[g.name]
            usable_kib = g.usable_kib
            rep.idle_mib_s += usable_kib / KIB_PER_MIB * step_s
            rep.cache_mib_s += g.cache_kib / KIB_PER_MIB * step_s
            if g.used_kib > rep.peak_used_mib * KIB_PER_MIB:
                rep.peak_used_mib = g.used_kib / KIB_PER_MIB
            if g.actual_kib > rep.peak_size_mib * KIB_PER_MIB:
                rep.peak_size_mib = g.actual_kib / KIB_PER_MIB
            if usable_kib <= starving_kib and g.actual_kib < g.max_kib:
                rep.starving_s += step_s
                if rep._starving_since_s is None:
                    rep._starving_since_s = now_s - step_s
            elif rep._starving_since_s is not None:
                rep.relief_s.append(now_s - rep._starving_since_s)
                rep._starving_since_s = None
        available_kib = hv.host_available_kib()
        if available_kib < host_min_kib:
            host_min_kib, host_min_at_s = available_kib, now_s
        if available_kib < guard_kib:
            below_guard_s += step_s
            if below_since_s is None:
                below_since_s = now_s - step_s
            longest_below_s = max(longest_below_s, now_s - below_since_s)
        else:
            below_since_s = None

    for g in hv.guests.values():
        rep = reports[g.name]
        rep.oom_kills = g.oom_kills
        rep.final_size_mib = g.actual_kib / KIB_PER_MIB
        if rep._starving_since_s is not None:
            rep.unrelieved += 1
            rep.relief_s.append(n_steps * step_s - rep._starving_since_s)
    return RunReport(
        scenario=scenario.name,
        policy=policy_name,
        duration_s=n_steps * step_s,
        starving_mib=config.guest.starving_mib,
        host_total_mib=hv.host_total_kib / KIB_PER_MIB,
        host_min_available_mib=host_min_kib / KIB_PER_MIB,
        host_min_at_s=host_min_at_s,
        guests=list(reports.values()),
        timeline=timeline,
        host_guard_mib=config.host.min_available_mib,
        host_below_guard_s=below_guard_s,
        host_longest_below_guard_s=longest_below_s,
    )


# -- output --------------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table: first column left, the rest right (they are numbers)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def _opt(value: float | None, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


MAX_GUEST_ROWS = 40


def summary(report: RunReport) -> str:
    """The per-guest table and the host line that `memcoord simulate` prints."""
    headers = [
        "guest",
        "max MiB",
        "peak used MiB",
        "peak size MiB",
        "final size MiB",
        "OOM kills",
        "starving s",
        "mean idle MiB",
        "mean cache MiB",
        "balloon changes",
        "max relief s",
    ]
    rows = [
        [
            g.name,
            f"{g.max_mib:.0f}",
            f"{g.peak_used_mib:.0f}",
            f"{g.peak_size_mib:.0f}",
            f"{g.final_size_mib:.0f}",
            g.oom_kills,
            f"{g.starving_s:.1f}",
            f"{g.mean_idle_mib(report.duration_s):.0f}",
            f"{g.mean_cache_mib(report.duration_s):.0f}",
            g.balloon_changes,
            _opt(max(g.relief_s) if g.relief_s else None),
        ]
        for g in report.guests
    ]
    hidden = 0
    if len(rows) > MAX_GUEST_ROWS:
        hidden = len(rows) - MAX_GUEST_ROWS
        rows = rows[:MAX_GUEST_ROWS]
    rows.append(
        [
            "TOTAL",
            "",
            "",
            "",
            "",
            report.oom_kills,
            f"{report.starving_guest_s:.1f}",
            f"{report.mean_idle_mib:.0f}",
            f"{report.mean_cache_mib:.0f}",
            report.balloon_changes,
            _opt(report.max_relief_s),
        ]
    )
    lines = [
        f"scenario {report.scenario}: policy {report.policy}, {report.duration_s:.0f} s simulated",
        format_table(headers, rows),
    ]
    if hidden:
        lines.append(f"({hidden} more guests not shown; TOTAL counts all of them)")
    lines.append(
        f"host: total {report.host_total_mib:.0f} MiB, minimum available {report.host_min_available_mib:.0f} MiB"
        f" at t={report.host_min_at_s:.1f} s; below its {report.host_guard_mib:.0f} MiB guard"
        f" {report.host_below_guard_s:.1f} s, longest {report.host_longest_below_guard_s:.1f} s"
    )
    lines.append(
        f"idle = free + page cache (held, not used by programs); starving = idle <= {report.starving_mib} MiB while"
        " below max; relief = length of a starving spell"
    )
    return "\n".join(lines)


def plot(report: RunReport, out: Path) -> None:
    """Draw the timeline (needs matplotlib: pip install 'memcoord[plot]')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = report.timeline
    if tl is None:
        raise ValueError("run(record=True) is needed for a plot")
    fig, (ax_guests, ax_host) = plt.subplots(2, 1, sharex=True, figsize=(10, 7), height_ratios=[3, 1])
    shown = list(tl.size_mib)[:12]
    for name in shown:
        (line,) = ax_guests.plot(tl.t_s, tl.size_mib[name], label=f"{name} size")
        ax_guests.plot(tl.t_s, tl.used_mib[name], linestyle="--", color=line.get_color(), label=f"{name} used")
        if any(tl.cache_mib[name]):
            used_and_cache = [u + c for u, c in zip(tl.used_mib[name], tl.cache_mib[name], strict=True)]
            ax_guests.plot(tl.t_s, used_and_cache, linestyle=":", color=line.get_color(), label=f"{name} used+cache")
    ax_guests.set_ylabel("MiB")
    ax_guests.set_title(f"{report.scenario} - policy {report.policy}")
    ax_guests.legend(fontsize="small", ncol=2)
    ax_host.plot(tl.t_s, tl.host_available_mib, color="black")
    ax_host.set_ylabel("host available MiB")
    ax_host.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


EX_DATAERR = 65
EX_UNAVAILABLE = 69


def main(
    scenario_path: Path, config: Config, policy_name: str, duration_s: float | None, plot_path: Path | None
) -> int:
    """What `memcoord simulate` does once its arguments are parsed; returns the exit code."""
    import sys

    try:
        scenario = load_scenario(scenario_path)
    except ScenarioError as exc:
        print(f"memcoord: invalid scenario:\n{exc}", file=sys.stderr)
        return EX_DATAERR
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("memcoord: --plot needs matplotlib: pip install 'memcoord[plot]'", file=sys.stderr)
            return EX_UNAVAILABLE
    if config.loop.dry_run:
        print("note: loop.dry_run is ignored here; the simulation applies every plan", file=sys.stderr)
    report = run(scenario, config, policy_name, duration_s, record=plot_path is not None)
    print(summary(report))
    if plot_path is not None:
        plot(report, plot_path)
        print(f"timeline written to {plot_path}")
    return 0
