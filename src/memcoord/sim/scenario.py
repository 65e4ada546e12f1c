"""The scenario file of `memcoord simulate`: its schema (pydantic models), loading with clear errors, and the
simulated host it describes.

A scenario is guests (size, workload, page-cache reader), a host (size, other use, pressure over time) and a
seed, so that a run is the same on any machine. Times in a scenario are seconds from the start of the run;
on the simulated host they are offset by SIM_EPOCH_S.
"""

from __future__ import annotations

import random
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memcoord.core.config import describe_error
from memcoord.core.model import mib_to_kib
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import (
    Burst,
    FileReader,
    Hog,
    HostPressure,
    Idle,
    Sawtooth,
    Trace,
    TraceError,
    Workload,
    load_trace,
)

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
    rate_mib_per_s: float = Field(gt=0)
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
    # The share of the cache the guest counts in its MemAvailable (a real guest streaming its disk counted less).
    available_pct: float = Field(100, ge=0, le=100)

    @model_validator(mode="after")
    def _stop_after_start(self) -> CacheSpec:
        if self.stop_s is not None and self.stop_s <= self.start_s:
            raise ValueError(f"stop_s ({self.stop_s}) must be after start_s ({self.start_s})")
        return self


class ClaimsSpec(_Model):
    """A lying guest: its balloon stats report these figures whatever it holds (absent: the truth)."""

    unused_mib: float | None = Field(None, ge=0)
    usable_mib: float | None = Field(None, ge=0)


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
    # The guest boots at this time (not running before); its workload's and cache's times count from its boot.
    boot_s: float | None = Field(None, ge=0)
    claims: ClaimsSpec | None = None

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
    # What each guest's QEMU process holds beyond the guest's own pages (counted in its RSS, never given back).
    qemu_overhead_mib: int = Field(0, ge=0)
    # The host's processes stall on memory (PSI) while its available memory is below this; absent: no PSI.
    thrash_below_mib: int | None = Field(None, gt=0)
    # memcoord's libvirt hook is installed: a guest booting during the run first asks memcoord for room
    # (make-room) and boots once the room is there, or after hook_timeout_s.
    make_room: bool = False
    hook_timeout_s: float = Field(5.0, gt=0)


class Scenario(_Model):
    name: str
    description: str = ""
    duration_s: float = Field(gt=0)
    seed: int = 0
    step_s: float = Field(0.1, gt=0, le=10)
    balloon_rate_mib_per_s: float = Field(500, gt=0)
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
                rate_kib_per_s=mib_to_kib(spec.rate_mib_per_s),
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
        available_pct=spec.available_pct,
    )


def _claimed_kib(mib: float | None) -> int | None:
    return None if mib is None else mib_to_kib(mib)


def build_host(scenario: Scenario, realtime: bool = False) -> SimulatedHypervisor:
    """The simulated host for a scenario; copies of a guest are named name-01, name-02, ..."""
    rng = random.Random(scenario.seed)
    guests = []
    for spec in scenario.guests:
        width = len(str(spec.count))
        for i in range(spec.count):
            name = spec.name if spec.count == 1 else f"{spec.name}-{i + 1:0{width}d}"
            offset_s = (rng.uniform(0, spec.stagger_s) if spec.stagger_s else 0.0) + (spec.boot_s or 0.0)
            workload = _workload(scenario, spec.workload, offset_s, rng.randrange(2**32))
            claims = spec.claims or ClaimsSpec()
            guests.append(
                SimGuest(
                    name,
                    max_kib=mib_to_kib(spec.max_mib),
                    target_kib=mib_to_kib(spec.start_mib),
                    workload=workload,
                    reader=_reader(spec.cache, offset_s),
                    has_balloon_stats=spec.balloon_stats,
                    overhead_kib=mib_to_kib(scenario.host.qemu_overhead_mib),
                    boot_s=None if spec.boot_s is None else SIM_EPOCH_S + spec.boot_s,
                    claimed_unused_kib=_claimed_kib(claims.unused_mib),
                    claimed_usable_kib=_claimed_kib(claims.usable_mib),
                )
            )
    return SimulatedHypervisor(
        guests,
        host_total_kib=mib_to_kib(scenario.host.total_mib),
        balloon_rate_kib_per_s=mib_to_kib(scenario.balloon_rate_mib_per_s),
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
        thrash_below_kib=None if scenario.host.thrash_below_mib is None else mib_to_kib(scenario.host.thrash_below_mib),
    )
