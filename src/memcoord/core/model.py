"""Plain data that crosses the boundary between the shell and the pure policy.

Everything here is frozen: a snapshot is what the hypervisor said at one instant, a plan is what the policy
wants done. Sizes are KiB throughout, as libvirt's balloon stats and setMemory are; the names say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

KIB_PER_MIB = 1024


def mib_to_kib(mib: float) -> int:
    return int(mib * KIB_PER_MIB)


def kib_to_mib(kib: int) -> float:
    return kib / KIB_PER_MIB


class Unballoonable(StrEnum):
    """Why ballooning cannot help a guest, as its libvirt definition says: memcoord never manages such a guest.

    `why` says it for an admin (plan, status); the value is what status and the state file show."""

    why: str

    def __new__(cls, value: str, why: str) -> Unballoonable:
        member = str.__new__(cls, value)
        member._value_ = value
        member.why = why
        return member

    NO_BALLOON = "no-balloon", "no balloon device (<memballoon model='none'> or none at all): nothing to resize"
    # QEMU inhibits the balloon while a VFIO device is assigned: a device may DMA into any guest page.
    HOSTDEV = "hostdev", "a host device is assigned (VFIO): QEMU inhibits its balloon"
    # The balloon hands back 4 KiB pages; a hugepage is freed only when all of it is, and stays reserved anyway.
    HUGEPAGES = "hugepages", "its memory is backed by hugepages (<memoryBacking><hugepages/>): ballooning frees nothing"
    LOCKED = "locked", "its memory is locked (<memoryBacking><locked/>): ballooning frees nothing safely"


@dataclass(frozen=True, slots=True)
class DomainSettings:
    """What a domain's own libvirt definition says about memcoord, so that it travels with the VM.

    metadata: the per-domain keys (those of a `[domains."NAME"]` table: min_mib, max_mib, enabled ...) that the
    domain's `<memcoord:settings>` metadata element sets validly; min_guarantee_kib: libvirt's
    `<memtune><min_guarantee>`, None when the domain has none. The config file's own `[domains."NAME"]` keys
    win over both (Config.floor, Config.ceiling). metadata_invalid: the metadata element had a key that could
    not be believed (a bad value, an unknown or misspelt key, a contradiction); memcoord then leaves the guest
    alone until it is fixed, because a misspelt `enabled = false` must not leave the guest managed.
    deflate_on_oom: the balloon may deflate on the guest's own OOM (`<memballoon autodeflate='on'>`): such a
    guest counts the balloon's pages as used instead of shrinking its MemTotal (`DomainStats.own_total_kib`).
    unballoonable: why ballooning cannot help this guest (no balloon, VFIO, hugepages, locked memory); such a
    guest is never managed."""

    metadata: Mapping[str, int | float | bool] = field(default_factory=lambda: MappingProxyType({}))
    min_guarantee_kib: int | None = None
    metadata_invalid: bool = False
    deflate_on_oom: bool = False
    unballoonable: Unballoonable | None = None


# A domain whose definition sets nothing for memcoord (and what a simulated guest has unless it says otherwise).
NO_SETTINGS = DomainSettings()


@dataclass(frozen=True, slots=True)
class DomainStats:
    """One running guest as its balloon reports it. Guest-side figures are None when the guest gave none.

    settings: what the domain's definition says (metadata, min_guarantee); None while the adapter has not read
    it yet, and such a guest is left alone (its metadata may exclude it)."""

    name: str
    current_kib: int
    max_kib: int
    unused_kib: int | None = None
    usable_kib: int | None = None
    available_kib: int | None = None
    rss_kib: int | None = None
    last_update_s: int | None = None
    settings: DomainSettings | None = NO_SETTINGS

    @property
    def own_total_kib(self) -> int | None:
        """What the guest's programs and page cache can have at this balloon size, by the guest's own count:
        its MemTotal (balloon.available), which a Linux guest shrinks as the balloon inflates. A guest whose
        balloon may deflate on OOM (`DomainSettings.deflate_on_oom`) keeps MemTotal at its full size and counts
        the balloon's pages as used: what the balloon holds (maximum - current) comes off it. (Whether MemTotal
        is above balloon.current cannot tell the two apart: a normal guest's report from before a reclaim landed
        is too.) None where the guest gives no MemTotal."""
        if self.available_kib is None:
            return None
        if self.settings is not None and self.settings.deflate_on_oom:
            return self.available_kib - (self.max_kib - self.current_kib)
        return self.available_kib


@dataclass(frozen=True, slots=True)
class HostStats:
    """The host as the shell measures it. reserved_kib: memory held above the guard for a VM about to start
    (the policy's budget leaves it alone); pressure_some_avg10: the host's PSI memory `some avg10` (percent), None
    where it is not measured."""

    available_kib: int
    total_kib: int
    reserved_kib: int = 0
    pressure_some_avg10: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All running guests and the host at one instant; taken_at_s is wall-clock seconds (epoch)."""

    host: HostStats
    domains: tuple[DomainStats, ...]
    taken_at_s: float


class GuestClass(StrEnum):
    STARVING = "starving"
    WASTEFUL = "wasteful"
    IDLE = "idle"
    BUSY = "busy"
    NO_STATS = "no-stats"
    STALE = "stale"
    # The guest's last sample could not be true (free memory above its own total or its balloon's size,
    # ...): it is treated as no sample, and `Plan.refused` says why.
    BAD_STATS = "bad-stats"

    @property
    def trusted(self) -> bool:
        """The policy acts on this guest's own figures."""
        return self not in (GuestClass.NO_STATS, GuestClass.STALE, GuestClass.BAD_STATS)


class Action(StrEnum):
    """What a setMemory is for. Each kind is defined here once, with everything that shows it elsewhere.

    message_id: the journal's MESSAGE_ID for the kind (`journalctl MESSAGE_ID=...`); stable across releases.
    marker, colour: how `memcoord plot` marks it (a matplotlib marker and colour).
    The metrics label and the timeline's "action" field are the value itself. A new kind is one line here,
    with a new MESSAGE_ID (tests/unit/test_vocabulary.py checks every kind is complete and distinct).
    """

    message_id: str
    marker: str
    colour: str

    def __new__(cls, value: str, message_id: str, marker: str, colour: str) -> Action:
        member = str.__new__(cls, value)
        member._value_ = value
        member.message_id = message_id
        member.marker = marker
        member.colour = colour
        return member

    GROW = "grow", "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c01", "^", "tab:green"
    RECLAIM = "reclaim", "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c02", "v", "tab:blue"
    TAX = "tax", "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c03", "x", "tab:purple"
    CLAMP = "clamp", "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c04", "s", "tab:orange"
    # Taken back because the host's available memory is below its guard (host-pressure relief).
    RELIEVE = "relieve", "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c06", "v", "tab:red"
    # Set by `memcoord restore`, not by the policy: a guest handed back to its maximum (or a size the admin gave).
    RESTORE = "restore", "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c07", "D", "tab:brown"


# Actions that lower a guest's target: its next samples may look busy from the balloon's own move.
LOWERING_ACTIONS = frozenset({Action.RECLAIM, Action.TAX, Action.RELIEVE})


class Band(NamedTuple):
    """Where a guest should be, in balloon sizes (KiB): floor <= low <= high <= ceiling.

    Below low it needs memory now (its starving line plus what its ramp takes until memcoord can act again); above
    high while idle it holds memory it does not need (its wasteful line, or its recent peak). why: how low and high
    were found, for the journal and `memcoord plan`.

    A named tuple, not a frozen dataclass: the policy builds one per guest and tick, and a frozen dataclass's
    __init__ costs three times as much (an object.__setattr__ per field)."""

    floor_kib: int
    low_kib: int
    high_kib: int
    ceiling_kib: int
    why: str = ""


class Rule(StrEnum):
    """The step of the policy that moved a guest, and the action it sets."""

    action: Action

    def __new__(cls, value: str, action: Action) -> Rule:
        member = str.__new__(cls, value)
        member._value_ = value
        member.action = action
        return member

    FLOOR = "floor", Action.CLAMP  # below its floor: raised to it, whatever the host has
    CEILING = "ceiling", Action.CLAMP  # above its ceiling: lowered toward it, never below its low
    RELIEF = "relief", Action.RELIEVE  # the host budget is negative: taken from above low, largest first
    RECLAIM = "reclaim", Action.RECLAIM  # idle above its high: a reclaim step toward it
    NEED = "need", Action.GROW  # below its low: grown toward its band from the host budget
    # Short of lasting until memcoord can act again: lent what it lacks, from what the guard holds for others'
    # grants (never the guard itself) or the host's room beyond what every ramp reaches meanwhile.
    LENT = "lent", Action.GROW
    POOL = "pool", Action.GROW  # busy below its high: a share of what was reclaimed this tick
    # For a guest below its low the budget cannot lift: from above the giver's high, or from between its low and
    # high: what the guest lacks to last until memcoord can act again, and toward its low the giver's page cache.
    SURPLUS = "surplus", Action.RECLAIM
    COMFORT = "comfort", Action.RECLAIM
    TAX = "tax", Action.TAX  # idle: the idle tax, for a guest below its low that grows (the seed's rule)


def _mib(kib: int) -> str:
    """A size for the journal's words. Not nested in `Reason.text`: a busy tick renders thousands of reasons, and
    a nested function is built anew on every call."""
    return f"{kib_to_mib(kib):.0f} MiB"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a guest moves, as data: the rule, the guest's band, the host budget and the guest's weight when it was
    decided, and the guest's own figures (free memory at its target before the move, which balloon stat that is,
    its ramp, the sample's age). `text()` is the one place the journal's words come from."""

    rule: Rule
    band: Band
    budget_kib: int
    weight: int
    free_kib: int | None = None
    figure: str = "usable"
    ramp_kib_per_s: float = 0.0
    age_s: float = 0.0

    def text(self) -> str:
        b, rule = self.band, self.rule
        free = "no figures" if self.free_kib is None else f"{_mib(self.free_kib)} {self.figure}"
        band = f"band {_mib(b.low_kib)}..{_mib(b.high_kib)} ({b.why})"
        budget = f"host budget {_mib(self.budget_kib)}"
        if rule in (Rule.NEED, Rule.LENT):
            ramp = f", ramping {kib_to_mib(int(self.ramp_kib_per_s)):.0f} MiB/s" if self.ramp_kib_per_s else ""
            late = f", stats {self.age_s:.0f} s old" if self.age_s >= 2 else ""
            lent = ": lent what it lacks to last until memcoord can act again"
            how = f", weight {self.weight}" if rule is Rule.NEED else lent
            return f"below its low ({free}{ramp}{late}), {budget}{how}; {band}"
        if rule is Rule.FLOOR:
            text = f"below its floor {_mib(b.floor_kib)}"
        elif rule is Rule.CEILING:
            text = f"above its ceiling {_mib(b.ceiling_kib)}; never below its low"
        elif rule is Rule.RELIEF:
            # A budget still positive when relief runs: the host's memory pressure (PSI) asked for it.
            text = (
                f"host under memory pressure ({budget}): from above its low"
                if self.budget_kib >= 0
                else f"host short ({budget}: below its guard, or room held for a VM about to start): from above its low"
            )
        elif rule is Rule.RECLAIM:
            text = "idle above its high: a reclaim step"
        elif rule is Rule.POOL:
            text = "busy below its high: share of memory reclaimed this tick"
        elif rule is Rule.SURPLUS:
            text = f"for a guest below its low the host cannot lift ({budget}): from above its high"
        elif rule is Rule.COMFORT:
            text = f"for a guest below its low the host cannot lift ({budget}): from between its low and high"
        elif rule is Rule.TAX:
            text = "idle tax for a guest below its low that grows"
        else:
            raise ValueError(f"no words for rule {rule!r}")
        return f"{text}; {free}, {band}"


@dataclass(frozen=True, slots=True)
class Change:
    """One setMemory the policy wants: domain from from_kib to to_kib, and why (reason: the journal's text; why:
    the same as data, None for a change not made by the policy, such as `memcoord restore`'s)."""

    domain: str
    action: Action
    from_kib: int
    to_kib: int
    reason: str
    why: Reason | None = None

    @property
    def delta_kib(self) -> int:
        return self.to_kib - self.from_kib


@dataclass(frozen=True, slots=True)
class Plan:
    """The policy's answer for one tick."""

    changes: tuple[Change, ...]
    classes: dict[str, GuestClass]
    host_headroom_kib: int
    notes: tuple[str, ...] = field(default=())
    # How far the host is below its guard (0 when at or above it), and what relief could not find this tick
    # in the guests' reclaimable memory (0 when relief covers the deficit, or there is none).
    host_deficit_kib: int = 0
    relief_shortfall_kib: int = 0
    # Each managed guest's band; why a guest's sample was refused (its class is then bad-stats); what each guest
    # below its low wanted this tick and did not get.
    bands: Mapping[str, Band] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)
    unmet_kib: Mapping[str, int] = field(default_factory=dict)
    # The guests that did not give when last asked: they give last, for a while (policy.NO_PROGRESS_STALE_PERIODS).
    balking: frozenset[str] = frozenset()

    def count(self, guest_class: GuestClass) -> int:
        return sum(1 for c in self.classes.values() if c is guest_class)


class Outcome(StrEnum):
    """What became of one setMemory (the timeline's and the journal's word for it)."""

    SET = "set"  # the hypervisor accepted it
    FAILED = "failed"  # refused, or never sent: the balloon target did not change
    # Sent, but no answer in time (a hung QEMU monitor or libvirtd): it may still land, now or later. The next
    # samples' balloon.current tell; until then the policy counts it as set (policy.applied).
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """One change and what became of it. error: why it failed, or why its outcome is unknown; None when set.
    sent: False for a change never put to the hypervisor (the domain gone from its list, the tick's deadline spent,
    a growth held back, no undo record): such a failure says nothing of the guest."""

    change: Change
    error: str | None = None
    unknown: bool = False
    sent: bool = True

    def __post_init__(self) -> None:
        if self.unknown and self.error is None:
            raise ValueError("an unknown outcome says why (error)")
        if not self.sent and (self.error is None or self.unknown):
            raise ValueError("a change never sent failed, and says why (error)")

    @property
    def outcome(self) -> Outcome:
        if self.error is None:
            return Outcome.SET
        return Outcome.UNKNOWN if self.unknown else Outcome.FAILED

    @property
    def ok(self) -> bool:
        """Accepted by the hypervisor."""
        return self.error is None

    @property
    def may_have_landed(self) -> bool:
        """Accepted, or sent with its outcome unknown: what the policy must count as set."""
        return self.error is None or self.unknown
