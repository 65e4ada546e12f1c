"""Plain data that crosses the boundary between the shell and the pure policy.

Everything here is frozen: a snapshot is what the hypervisor said at one instant, a plan is what the policy
wants done. Sizes are KiB throughout, as libvirt's balloon stats and setMemory are; the names say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

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
    available_kib: int
    total_kib: int


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


@dataclass(frozen=True, slots=True)
class Change:
    """One setMemory the policy wants: domain from from_kib to to_kib, and why."""

    domain: str
    action: Action
    from_kib: int
    to_kib: int
    reason: str

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

    def count(self, guest_class: GuestClass) -> int:
        return sum(1 for c in self.classes.values() if c is guest_class)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    change: Change
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
