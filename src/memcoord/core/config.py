"""The one validated configuration, what it means, and the one error type for everything wrong with it.

Every message names the file, the key and the value, so that an admin who broke /etc/memcoord.toml at 3 a.m.
knows which line to fix. A config is either loaded whole or not at all: there is no partial result. The frozen
`Config` is what the daemon runs on, loaded in process at start and on every reload; the rules a running daemon
applies to it (floors, ceilings, which domains it manages, the metrics endpoint's address) are its methods.
"""

from __future__ import annotations

import fnmatch
import functools
import grp
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, NamedTuple

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from memcoord.core.model import NO_SETTINGS, DomainSettings, mib_to_kib

DEFAULT_LISTEN = "127.0.0.1:9749"
# A guest's weight in a scarce split when neither the config file nor its metadata sets one.
DEFAULT_WEIGHT = 100
# `Config.domain_rules` keeps what it found for at most this many domain names, then starts over: a host that
# starts and removes guests for months (CI runners with a new name each) does not grow the daemon without bound.
DOMAIN_RULES_KEPT = 65536
# `Config.for_host` keeps the config it resolved for at most this many host sizes (few: the size moves with
# hot-plugged memory, or with the host's own balloon where the host is itself a VM).
HOST_SIZES_KEPT = 4
# Where the Config keeps what it found for domains and hosts: in its __dict__, as cached properties.
_KEPT = ("_domain_rules_kept", "_for_host_kept")


class ConfigError(Exception):
    """The config file is wrong; the message says where and how (file, key, value)."""


class ConfigFileError(ConfigError):
    """The config file cannot be read at all (missing, a directory, no permission)."""


class Profile(StrEnum):
    """How eagerly idle guests give memory back (host.profile)."""

    DENSITY = "density"  # the seed's loop: whenever they have more than their wasteful line free
    PRODUCTION = "production"  # only when the host runs short of a comfort target, or a guest starves


# The production profile's values, where the file does not set the keys itself: reclaim idle guests only below
# this share of the host's memory available (Proxmox balloons above 80 % host use, oVirt MOM below 20 % free),
# never below the guard plus a GiB; keep room for what a guest used in the last 10 minutes.
PRODUCTION_TARGET_PCT = 20.0
PRODUCTION_TARGET_ABOVE_GUARD_MIB = 1024
PRODUCTION_PEAK_HOLD_S = 600.0


class Source(StrEnum):
    """Where a guest's floor or ceiling came from, highest precedence first."""

    CONFIG = "config"
    METADATA = "metadata"
    MIN_GUARANTEE = "min_guarantee"
    LIBVIRT_MAX = "libvirt_max"
    DEFAULT = "default"


class DomainRules(NamedTuple):
    """What the config means for one domain of a libvirt maximum and settings (`Config.domain_rules`)."""

    max_kib: int
    settings: DomainSettings | None
    exclusion: str | None  # why memcoord leaves it alone (`Config.exclusion`), None when it manages it
    floor_kib: int
    ceiling_kib: int
    weight: int


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class LibvirtConfig(_Section):
    """The libvirt connection and the domains memcoord manages."""

    uri: str = Field(
        "qemu:///system",
        description="The libvirt connection URI. For a remote URI the host guard uses libvirt's node memory stats "
        "instead of this host's /proc/meminfo.",
        examples=["qemu+tls://kvm1.example.org/system"],
    )
    domains: tuple[str, ...] = Field(
        ("*",),
        description="Glob patterns of the running domains memcoord manages; any other domain is never touched. "
        "List the guests you mean when you first try memcoord on a host.",
        examples=[["web-*", "db1"]],
    )
    exclude: tuple[str, ...] = Field(
        (),
        description="Glob patterns of domains memcoord never touches, even when libvirt.domains matches them "
        '(a [domains."NAME"] table with enabled = false does the same for one exact name).',
        examples=[["test-*", "*-scratch"]],
    )

    @field_validator("domains", "exclude", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: Any) -> Any:
        return tuple(value) if isinstance(value, list) else value


class LoopConfig(_Section):
    """The tick: how often memcoord samples and acts."""

    interval_s: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="Time between ticks. Each tick makes one bulk stats call and at most one setMemory per guest.",
        examples=[2.0],
    )
    stats_period_s: int = Field(
        1,
        ge=1,
        le=3600,
        description="The balloon stats period memcoord sets on every managed running domain: the guests refresh "
        "their memory statistics this often.",
        examples=[2],
    )
    dry_run: bool = Field(
        False,
        description="Decide and log every action to the journal, never call setMemory (the balloon stats period is "
        "still set, so the guests report): the safe way to try memcoord on a host. Each tick starts from the "
        "targets dry run would have set, so the journal shows the path each guest would take, each step once.",
        examples=[True],
    )


class GuestConfig(_Section):
    """How guests are classified and how much memory moves per tick. "Free" is the guest's MemAvailable (free memory
    plus page cache it can drop), or MemFree where the guest does not report it; each line is the larger of a MiB
    figure and a share of the guest's size."""

    # Thresholds and the grow step are max(MiB, % of the guest's size): the MiB figures suit small guests, the
    # percentages large ones (5 % of a 64 GiB database is 3.2 GiB, where 150 MiB would be nothing). The
    # wasteful line always stays wasteful_mib - starving_mib above the starving line, whatever the percentages.
    starving_mib: int = Field(
        150,
        ge=0,
        description="A guest whose free memory (MemAvailable, or MemFree where the guest does not report it) is at "
        "or below max(starving_mib, starving_pct of its size) is starving and grows; also when its ramp will take "
        "it there before memcoord can act again. Must be less than wasteful_mib.",
        examples=[200],
    )
    starving_pct: float = Field(
        5.0, ge=0, le=50, description="The starving line as a share of the guest's size (see starving_mib)."
    )
    wasteful_mib: int = Field(
        350,
        gt=0,
        description="A guest with at least max(wasteful_mib, wasteful_pct of its size) free while idle (its used "
        "memory steady) is wasteful: it gives memory back, down to this line.",
        examples=[512],
    )
    wasteful_pct: float = Field(
        15.0, ge=0, le=90, description="The wasteful line as a share of the guest's size (see wasteful_mib)."
    )
    grow_step_mib: int = Field(
        300,
        gt=0,
        description="The least a starving guest grows by (or grow_step_pct of its size if more); a guest whose used "
        "memory ramps gets what the ramp needs.",
    )
    grow_step_pct: float = Field(
        5.0, ge=0, le=100, description="The grow step as a share of the guest's size (see grow_step_mib)."
    )
    reclaim_step_mib: int = Field(
        100,
        gt=0,
        description="The most a wasteful idle guest gives back per tick. Must be less than wasteful_mib - "
        "starving_mib, or a guest would be reclaimed and regrown on alternate ticks.",
    )
    min_mib: int = Field(
        256,
        gt=0,
        description='memcoord never sets a guest below this (a [domains."NAME"] min_mib overrides it for one guest).',
    )
    min_pct: float = Field(
        0.0,
        ge=0,
        le=100,
        description="The floor as a share of the guest's libvirt maximum: no guest is set below max(min_mib, this "
        "share of its maximum), so that one key gives a 32 GiB guest a floor in proportion. 0: min_mib alone.",
    )
    idle_tax_mib: int = Field(
        2,
        ge=0,
        description="In a tick where a starving guest grows, each idle guest owes this much (or what it has above "
        "the middle of its band, if less), given to the starving: the guests with the most to spare pay it, in moves "
        "of 32 MiB (or this much, if more), never below the middle of their band.",
    )
    # Idle reclaim never takes a guest below the most its programs used in this many seconds (plus its
    # starving line): a guest that bursts keeps room for the next burst.
    peak_hold_s: float = Field(
        0.0,
        ge=0,
        description="Idle reclaim keeps room for the most the guest used in this many seconds, so a guest that "
        "bursts keeps room for the next burst. 0: off (reclaim down to the wasteful line). Left out of the file, it "
        f"comes from host.profile: 0 in the density profile, {PRODUCTION_PEAK_HOLD_S:.0f} in the production one.",
        examples=[600],
    )

    @model_validator(mode="after")
    def _starving_below_wasteful(self) -> GuestConfig:
        """Blame the key the file set: raising starving_mib past the default wasteful_mib is starving's fault."""
        _blame_pair(self, "starving_mib", "wasteful_mib", self.starving_mib < self.wasteful_mib)
        gap_mib = self.wasteful_mib - self.starving_mib
        if self.reclaim_step_mib >= gap_mib:
            # One step would take a guest from "wasteful" past "starving": it would be reclaimed and regrown
            # on alternate ticks. Blame the key the file set.
            step = self.reclaim_step_mib
            if "reclaim_step_mib" in self.model_fields_set or not self.model_fields_set & {
                "wasteful_mib",
                "starving_mib",
            }:
                key, value, rule = (
                    "reclaim_step_mib",
                    step,
                    f"less than guest.wasteful_mib - guest.starving_mib ({gap_mib})",
                )
            elif "wasteful_mib" in self.model_fields_set:
                key, value, rule = (
                    "wasteful_mib",
                    self.wasteful_mib,
                    f"more than guest.starving_mib + guest.reclaim_step_mib ({self.starving_mib + step})",
                )
            else:
                key, value, rule = (
                    "starving_mib",
                    self.starving_mib,
                    f"less than guest.wasteful_mib - guest.reclaim_step_mib ({self.wasteful_mib - step})",
                )
            raise PydanticCustomError("key_conflict", f"must be {rule}, or guests flap", {"key": key, "value": value})
        return self


def _blame_pair(section: _Section, low: str, high: str, ok: bool) -> None:
    """A rule between two keys names the one the file set (the low one when both or neither were set)."""
    if ok:
        return
    low_value, high_value = getattr(section, low), getattr(section, high)
    if low in section.model_fields_set or high not in section.model_fields_set:
        key, value, rule = low, low_value, f"less than guest.{high} ({high_value})"
    else:
        key, value, rule = high, high_value, f"greater than guest.{low} ({low_value})"
    raise PydanticCustomError("key_conflict", f"must be {rule}", {"key": key, "value": value})


class HostConfig(_Section):
    """The host guard: the memory the host keeps for itself, whatever the guests want."""

    profile: Literal["density", "production"] = Field(
        "density",
        description='"density" (the seed\'s loop): idle guests give back the memory they do not use, whatever the '
        'host has free. "production": idle guests give memory back only while the host\'s available memory is '
        "below a comfort target (host.target_available_mib; by default max(the guard + 1024 MiB, "
        f"{PRODUCTION_TARGET_PCT:.0f} % of the host's memory)) or a guest is starving, and never below what they "
        f"used in the last {PRODUCTION_PEAK_HOLD_S / 60:.0f} minutes (guest.peak_hold_s). Growth, the guard and "
        "relief are the same in both.",
        examples=["production"],
    )
    min_available_mib: int = Field(
        1024,
        ge=0,
        description="No grow may take the host's available memory below max(min_available_mib, "
        "min_available_pct of the host's memory), counting memory already granted to guests but not yet used by "
        "them. When the host falls below it for any reason, memcoord takes memory back from the guests with the "
        "most to spare (relief) until it is above again.",
        examples=[2048],
    )
    min_available_pct: float = Field(
        2.0,
        ge=0,
        le=50,
        description="The host guard as a share of the host's memory (see min_available_mib): 2 % is 10 GiB on a "
        "512 GiB host, where 1 GiB alone would be thin.",
        examples=[5.0],
    )
    # A guest that fills its target takes this too, so the host guard counts it.
    guest_overhead_mib: int = Field(
        128,
        ge=0,
        description="What QEMU needs per guest beyond the guest's own memory (device models, page tables); more "
        "under software emulation than under KVM.",
    )
    target_available_mib: int = Field(
        0,
        ge=0,
        description="When > 0, idle guests give memory back only while the host's available memory is below this "
        "(or a guest is starving). 0: they always do. Left out of the file, it comes from host.profile: 0 in the "
        f"density profile, max(the guard + 1024 MiB, {PRODUCTION_TARGET_PCT:.0f} % of the host's memory) in the "
        "production one. Must be 0 or more than min_available_mib.",
        examples=[3072],
    )
    relief_step_mib: int = Field(256, gt=0, description="The most relief takes from one guest per tick.")
    pressure_relief_pct: float = Field(
        0.0,
        ge=0,
        le=100,
        description="When > 0 and the host's memory pressure (PSI `some avg10`, percent) is above this, memcoord "
        "relieves the host as it does below min_available_mib, and nobody grows but for what a guest lacks to last "
        "until memcoord can act again (lent from the host's room above its guard). 0: off, the default: host PSI also "
        "counts stalls no balloon relieves (a process at its own cgroup's memory limit), so turn it on where host "
        "processes have no memory limits of their own.",
        examples=[10.0],
    )

    @model_validator(mode="after")
    def _target_above_guard(self) -> HostConfig:
        if self.target_available_mib and self.target_available_mib <= self.min_available_mib:
            raise PydanticCustomError(
                "key_conflict",
                f"must be 0 (off) or greater than host.min_available_mib ({self.min_available_mib})",
                {"key": "target_available_mib", "value": self.target_available_mib},
            )
        return self


class DomainOverride(_Section):
    """Settings for one domain, by its exact libvirt name: `[domains."web1"]` (not a glob).

    The same keys may travel with the VM in its libvirt definition, as memcoord metadata, so that a live
    migration takes them along:

        <metadata>
          <memcoord:settings xmlns:memcoord="urn:uuid:cb4040ed-7dd6-4676-9bfe-b48496c781ce">
            <memcoord:min_mib>1024</memcoord:min_mib>
            <memcoord:max_mib>4096</memcoord:max_mib>
            <memcoord:enabled>true</memcoord:enabled>
          </memcoord:settings>
        </metadata>

    Set them on a running guest (and in its definition) with:

        virsh metadata DOMAIN urn:uuid:cb4040ed-7dd6-4676-9bfe-b48496c781ce --key memcoord \\
          --set '<settings><min_mib>1024</min_mib></settings>' --live --config

    memcoord sees a change within a tick (libvirt's metadata-change event). Settings under 0.3's namespace
    `https://memcoord.example/xmlns/1` are still read in this release, with a warning saying how to move them.
    Each key is taken, per key, from the first of: this table, the metadata, libvirt's
    `<memtune><min_guarantee>` (the floor only; the QEMU driver refuses to define it, other drivers and older
    definitions may have it), the global default (guest.min_mib and guest.min_pct; the libvirt maximum for the
    ceiling). An invalid metadata key (not a number, min_mib above max_mib, an unknown key) is logged once,
    naming the domain, the element and the value, and the next source applies. `memcoord status` shows where
    each guest's floor and ceiling came from.
    """

    min_mib: int | None = Field(
        None,
        gt=0,
        description="The floor for this guest (instead of guest.min_mib and any metadata or min_guarantee).",
        examples=[1024],
    )
    max_mib: int | None = Field(
        None,
        gt=0,
        description="The ceiling for this guest, below its libvirt maximum. At least min_mib.",
        examples=[4096],
    )
    enabled: bool = Field(True, description="false: memcoord never touches this guest.", examples=[False])
    weight: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="This guest's weight when memory is scarce (default 100): guests that need memory share what "
        "the host has in proportion to their weights, as Proxmox's shares and Hyper-V's memory weight do.",
        examples=[200],
    )

    @field_validator("max_mib")
    @classmethod
    def _above_min(cls, max_mib: int | None, info: ValidationInfo) -> int | None:
        min_mib = info.data.get("min_mib")
        if max_mib is not None and min_mib is not None and max_mib < min_mib:
            raise ValueError(f"must be at least min_mib ({min_mib})")
        return max_mib


# -- observability: what the daemon publishes for `memcoord status/monitor/plot` and Prometheus ------------
class StatusConfig(_Section):
    """The daemon's view, rewritten after every tick, read by memcoord status and memcoord monitor."""

    path: str = Field("/run/memcoord/state.json", description="Where the daemon writes its view (JSON).")
    group: str = Field(
        "",
        description="A group that may read the view (the file gets mode 0640 and this group). Empty: root and "
        "the user memcoord runs as.",
        examples=["adm"],
    )

    @field_validator("group")
    @classmethod
    def _group_exists(cls, group: str) -> str:
        if group:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise ValueError("no such group") from None
        return group


class MetricsConfig(_Section):
    """The Prometheus endpoint (http(s)://listen/metrics). On loopback only a Prometheus on this host can scrape
    it; for a central Prometheus listen on the host's address, turn TLS on, and install the unit drop-in that
    allows the scraper (/usr/share/memcoord/systemd/metrics.conf)."""

    enabled: bool = Field(False, description="Serve the metrics endpoint.", examples=[True])
    # address and port are the split form older config files use: they apply while listen is left at its default
    # (a file may not change both).
    listen: str = Field(
        DEFAULT_LISTEN,
        description='Where the endpoint listens: "ADDRESS:PORT", "[IPV6]:PORT" or "HOST:PORT".',
        examples=["0.0.0.0:9749"],
    )
    address: str = Field(
        "127.0.0.1", description="Older split form of listen (the address); only while listen is left as it is."
    )
    port: int = Field(
        9749, ge=1, le=65535, description="Older split form of listen (the port); only while listen is left as it is."
    )
    # TLS: exposition.tls_context(). client_auth_required (mutual TLS) is what makes a listener on a routable
    # address safe to leave open.
    certfile: str = Field(
        "",
        description="TLS: the server certificate (PEM; it may hold the key too). Empty: plain HTTP.",
        examples=["/etc/memcoord/tls/server.pem"],
    )
    keyfile: str = Field("", description="TLS: the server certificate's key (PEM), unless certfile holds it.")
    client_cafile: str = Field(
        "",
        description="TLS: the CA that signs the scrapers' client certificates; a certificate a scraper presents is "
        "verified against it, and one from another CA is refused.",
    )
    client_auth_required: bool = Field(
        False,
        description="TLS: refuse scrapers without a client certificate too (needs client_cafile); false: a "
        "scraper that presents none is served.",
    )

    @field_validator("address")
    @classmethod
    def _valid_host(cls, address: str) -> str:
        check_host(address)
        return address

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, listen: str) -> str:
        split_listen(listen)
        return listen

    @field_validator("certfile", "keyfile", "client_cafile")
    @classmethod
    def _readable_file(cls, path: str) -> str:
        if path:
            try:
                with open(path, "rb"):
                    pass
            except FileNotFoundError:
                raise ValueError("no such file") from None
            except IsADirectoryError:
                raise ValueError("is a directory, not a PEM file") from None
            except OSError as exc:
                raise ValueError(f"cannot read: {exc.strerror}") from None
        return path

    @model_validator(mode="after")
    def _consistent(self) -> MetricsConfig:
        if self.listen != DEFAULT_LISTEN:
            for key in ("address", "port"):
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise PydanticCustomError(
                        "key_conflict",
                        "set metrics.listen or metrics.address/port, not both (listen replaces them)",
                        {"key": key, "value": getattr(self, key)},
                    )
        needs_cert = [k for k in ("keyfile", "client_cafile") if getattr(self, k)]
        if self.client_auth_required:
            needs_cert.append("client_auth_required")
        if needs_cert and not self.certfile:
            key = needs_cert[0]
            raise PydanticCustomError(
                "key_conflict", "needs metrics.certfile (TLS) too", {"key": key, "value": getattr(self, key)}
            )
        if self.client_auth_required and not self.client_cafile:
            raise PydanticCustomError(
                "key_conflict",
                "needs metrics.client_cafile, the CA that signs the scrapers' certificates",
                {"key": "client_auth_required", "value": True},
            )
        if self.certfile:
            # Load them now, so that check-config (and a reload) reject a key that does not match its
            # certificate, instead of the endpoint failing to start later. Imported here: `memcoord status` loads
            # the config to find the state file, and ssl is a tenth of its start-up.
            import ssl

            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.certfile, self.keyfile or None)
            except (ssl.SSLError, OSError) as exc:
                key = "keyfile" if self.keyfile else "certfile"
                raise PydanticCustomError(
                    "key_conflict",
                    f"does not load as a PEM certificate with its key: {exc}",
                    {"key": key, "value": getattr(self, key)},
                ) from None
            if self.client_cafile:
                try:
                    ssl.create_default_context(cafile=self.client_cafile)
                except (ssl.SSLError, OSError) as exc:
                    raise PydanticCustomError(
                        "key_conflict",
                        f"not a PEM CA certificate: {exc}",
                        {"key": "client_cafile", "value": self.client_cafile},
                    ) from None
        return self

    @property
    def bind(self) -> tuple[str, int]:
        """(address, port) to listen on, from listen or from address and port."""
        return split_listen(self.listen) if self.listen != DEFAULT_LISTEN else (self.address, self.port)

    @property
    def tls(self) -> bool:
        return bool(self.certfile)

    def plain_http_exposed(self) -> str | None:
        """A warning naming the key when the endpoint is on, without TLS, on an address other hosts may reach (any
        but loopback; a host name other than localhost may resolve to anything); None otherwise."""
        if not self.enabled or self.tls:
            return None
        host, _port = self.bind
        if host == "localhost" or _is_loopback_ip(host):
            return None
        key, value = ("listen", self.listen) if self.listen != DEFAULT_LISTEN else ("address", self.address)
        return (
            f"metrics.{key} = {value!r}: the metrics endpoint serves plain HTTP on an address other hosts may "
            "reach (no metrics.certfile): anyone there reads every guest's memory figures; turn TLS on "
            "(certfile, client_cafile, client_auth_required) or listen on 127.0.0.1"
        )


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def check_host(host: str) -> None:
    """An IP address (v4 or v6) or a host name; a name is resolved only when the endpoint starts."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise ValueError("not an IP address or host name")


def split_listen(listen: str) -> tuple[str, int]:
    """ "127.0.0.1:9749", "[::]:9749", "metrics.example:9749" -> (host, port); ValueError says what is wrong."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        raise ValueError('must be "ADDRESS:PORT" (e.g. "0.0.0.0:9749" or "[::]:9749")')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("not an IPv6 address between the brackets") from None
    elif ":" in host:
        raise ValueError('an IPv6 address needs brackets: "[ADDRESS]:PORT"')
    else:
        check_host(host)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return host, int(port_text)


class TimelineConfig(_Section):
    """A record of every tick (every guest's sizes and the actions taken), for memcoord plot."""

    path: str = Field(
        "",
        description="The file that gets one JSON line per tick. Empty: off. The unit lets the daemon write only "
        "under /var/lib/memcoord.",
        examples=["/var/lib/memcoord/timeline.jsonl"],
    )
    max_mib: int = Field(
        64,
        gt=0,
        description="When the file passes this size it is moved to PATH.1 (replacing the previous one) and a new "
        "one is started.",
    )


class RoomConfig(_Section):
    """`memcoord make-room`: room on the host for a VM about to start, asked of the running daemon."""

    socket: str = Field(
        "/run/memcoord/room.sock",
        description="The unix socket the daemon answers make-room requests on (mode 0660, group [status] group). "
        "Root, the daemon's own user and members of that group may ask; the daemon checks the asking process's "
        "credentials. Empty: no socket, make-room is refused.",
    )
    hold_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="How long the daemon holds the room asked for above the guard (idle guests are relieved to "
        "make it, and nobody grows into it). A request for a domain ends sooner: as that domain's QEMU takes the "
        "memory, what is held shrinks by its size. Long enough for a guest to boot and touch its memory.",
        examples=[300.0],
    )


class Config(_Section):
    libvirt: LibvirtConfig = LibvirtConfig()
    loop: LoopConfig = LoopConfig()
    guest: GuestConfig = GuestConfig()
    host: HostConfig = HostConfig()
    domains: dict[str, DomainOverride] = {}
    status: StatusConfig = StatusConfig()
    metrics: MetricsConfig = MetricsConfig()
    timeline: TimelineConfig = TimelineConfig()
    room: RoomConfig = RoomConfig()

    # -- what the config means for one domain -----------------------------------------------------------------
    def domain_rules(self, name: str, max_kib: int, settings: DomainSettings | None) -> DomainRules:
        """`exclusion()`, `floor_kib()`, `ceiling_kib()` and `weight()` of one domain, found once per (name,
        max_kib, settings) and kept while this config lives: the loop asks for every domain on every tick, and
        they change only with the domain's maximum, its settings (a new object when its metadata changes) or the
        config (a reload builds a new one)."""
        kept = self._domain_rules_kept
        found = kept.get(name)
        if found is not None and found.max_kib == max_kib and found.settings is settings:
            return found
        found = DomainRules(
            max_kib,
            settings,
            self.exclusion(name, settings),
            self.floor_kib(name, max_kib, settings),
            self.ceiling_kib(name, max_kib, settings),
            self.weight(name, settings),
        )
        if len(kept) >= DOMAIN_RULES_KEPT:
            kept.clear()
        kept[name] = found
        return found

    @functools.cached_property
    def _domain_rules_kept(self) -> dict[str, DomainRules]:
        """What `domain_rules` found, by domain name. A cached property lives in the instance's __dict__, which
        pydantic leaves out of equality, dumps and repr; `model_copy` drops it from a copy with other values."""
        return {}

    @functools.cached_property
    def _for_host_kept(self) -> dict[int, Config]:
        """What `for_host` resolved, by host size, where it differs from this config."""
        return {}

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Config:
        """pydantic's copy, without what this config found for its domains and hosts when the copy's values
        differ (pydantic copies the instance's __dict__, cached properties with it)."""
        copied = super().model_copy(update=update, deep=deep)
        if update:
            for key in _KEPT:
                copied.__dict__.pop(key, None)
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Config:
        """pydantic's deep copy, starting over what was found for domains and hosts (their settings hold read-only
        mappings, which do not copy)."""
        memo = {} if memo is None else memo
        for key in _KEPT:
            if key in self.__dict__:
                memo[id(self.__dict__[key])] = {}
        return super().__deepcopy__(memo)

    def __getstate__(self) -> dict[Any, Any]:
        """pydantic's pickled state, without what was found for domains and hosts (as for a deep copy)."""
        state = super().__getstate__()
        return {**state, "__dict__": {k: v for k, v in state["__dict__"].items() if k not in _KEPT}}

    def domain_setting(self, name: str, key: str, settings: DomainSettings | None) -> tuple[Any, Source] | None:
        """A per-domain key from the config file's `[domains."NAME"]` (what the file sets there), else from the
        domain's metadata; None when neither sets it."""
        override = self.domains.get(name)
        if override is not None and key in override.model_fields_set and getattr(override, key) is not None:
            return getattr(override, key), Source.CONFIG
        if settings is not None and key in settings.metadata:
            return settings.metadata[key], Source.METADATA
        return None

    def manages(self, name: str, settings: DomainSettings | None = NO_SETTINGS) -> bool:
        """True for a domain memcoord may touch: matched by libvirt.domains, not disabled (config or metadata),
        and its settings read (settings None: not yet, and its metadata may exclude it)."""
        return self.exclusion(name, settings) is None

    def exclusion(self, name: str, settings: DomainSettings | None = NO_SETTINGS) -> str | None:
        """Why memcoord leaves a domain alone: "libvirt.domains", "config" or "metadata" (enabled = false),
        "unread" (its settings not read yet), "bad-metadata" (its metadata has a key that cannot be believed, and
        the config file does not say `enabled` for it), or why ballooning cannot help it (model.Unballoonable:
        "no-balloon", "hostdev", "hugepages", "locked"; no setting overrides that); None for a managed domain."""
        if not _matcher(self.libvirt.domains)(name):
            return "libvirt.domains"
        if _matcher(self.libvirt.exclude)(name):
            return "libvirt.exclude"
        if settings is None:
            return "unread"
        if settings.unballoonable is not None:
            return str(settings.unballoonable)
        enabled = self.domain_setting(name, "enabled", settings)
        if settings.metadata_invalid and (enabled is None or enabled[1] is not Source.CONFIG):
            return "bad-metadata"
        return None if enabled is None or enabled[0] else str(enabled[1])

    def default_floor_kib(self, max_kib: int) -> int:
        """The floor of a guest of max_kib that nothing else sets: max(guest.min_mib, guest.min_pct of max_kib),
        in whole MiB."""
        share_kib = int(max_kib * self.guest.min_pct / 100)
        return max(mib_to_kib(self.guest.min_mib), share_kib - share_kib % 1024)

    def floor(self, name: str, max_kib: int, settings: DomainSettings | None = NO_SETTINGS) -> tuple[int, Source]:
        """The lowest target for a domain of max_kib (its libvirt maximum), in KiB, and where it came from:
        min_mib, else min_guarantee, else the default floor (guest.min_mib and guest.min_pct)."""
        default_kib = self.default_floor_kib(max_kib)
        found = self.domain_setting(name, "min_mib", settings)
        if found is not None and found[1] is Source.CONFIG:
            return mib_to_kib(found[0]), found[1]
        # Only the config file may set a floor below the default floor: a VM's own definition (metadata,
        # min_guarantee) travels between hosts and templates, and must not let memcoord squeeze it below the host's
        # own floor.
        # A source below it is passed over for the next one.
        candidates = [] if found is None else [(mib_to_kib(found[0]), found[1])]
        if settings is not None and settings.min_guarantee_kib:
            candidates.append((settings.min_guarantee_kib, Source.MIN_GUARANTEE))
        for floor_kib, source in candidates:
            if floor_kib >= default_kib:
                return floor_kib, source
        return default_kib, Source.DEFAULT

    def floor_kib(self, name: str, max_kib: int, settings: DomainSettings | None = NO_SETTINGS) -> int:
        return self.floor(name, max_kib, settings)[0]

    def ceiling(self, name: str, max_kib: int, settings: DomainSettings | None = NO_SETTINGS) -> tuple[int, Source]:
        """The highest target for a domain (KiB): its libvirt maximum, lowered by a max_mib, and where it came
        from (a max_mib at or above the maximum does not bind: the maximum does)."""
        found = self.domain_setting(name, "max_mib", settings)
        if found is None:
            return max_kib, Source.LIBVIRT_MAX
        ceiling_kib = mib_to_kib(found[0])
        if found[1] is not Source.CONFIG:  # as for the floor: the VM's definition never goes below the default floor
            ceiling_kib = max(ceiling_kib, self.default_floor_kib(max_kib))
        return (ceiling_kib, found[1]) if ceiling_kib < max_kib else (max_kib, Source.LIBVIRT_MAX)

    def ceiling_kib(self, name: str, max_kib: int, settings: DomainSettings | None = NO_SETTINGS) -> int:
        return self.ceiling(name, max_kib, settings)[0]

    def weight(self, name: str, settings: DomainSettings | None = NO_SETTINGS) -> int:
        """A domain's weight in a scarce split: its weight key (config file, else metadata), else DEFAULT_WEIGHT."""
        found = self.domain_setting(name, "weight", settings)
        return DEFAULT_WEIGHT if found is None else int(found[0])

    def guard_mib(self, host_total_kib: int) -> int:
        """The host guard on a host of host_total_kib: max(host.min_available_mib, min_available_pct of it)."""
        return max(self.host.min_available_mib, int(host_total_kib * self.host.min_available_pct / 100) // 1024)

    def target_available_mib(self, host_total_kib: int) -> int:
        """Idle guests give memory back only while the host has less than this available (0: always): the
        file's host.target_available_mib, else the profile's."""
        if "target_available_mib" in self.host.model_fields_set or self.host.profile != Profile.PRODUCTION.value:
            return self.host.target_available_mib
        return max(
            self.guard_mib(host_total_kib) + PRODUCTION_TARGET_ABOVE_GUARD_MIB,
            int(host_total_kib * PRODUCTION_TARGET_PCT / 100) // 1024,
        )

    def peak_hold_s(self) -> float:
        """guest.peak_hold_s from the file, else the profile's."""
        if "peak_hold_s" in self.guest.model_fields_set or self.host.profile != Profile.PRODUCTION.value:
            return self.guest.peak_hold_s
        return PRODUCTION_PEAK_HOLD_S

    def for_host(self, host_total_kib: int) -> Config:
        """This config with what scales with the host resolved into the keys the policy reads: the guard
        (host.min_available_mib) and the profile's comfort target and peak hold. Itself when nothing changes.

        The same object on every call for a host size, so that what it finds for each domain (`domain_rules`)
        lasts from tick to tick."""
        kept = self._for_host_kept
        found = kept.get(host_total_kib)
        if found is not None:
            return found
        host = {
            "min_available_mib": self.guard_mib(host_total_kib),
            "target_available_mib": self.target_available_mib(host_total_kib),
        }
        host = {k: v for k, v in host.items() if getattr(self.host, k) != v}
        guest = {"peak_hold_s": self.peak_hold_s()} if self.peak_hold_s() != self.guest.peak_hold_s else {}
        update: dict[str, _Section] = {}
        if host:
            update["host"] = self.host.model_copy(update=host)
        if guest:
            update["guest"] = self.guest.model_copy(update=guest)
        if not update:
            return self
        if len(kept) >= HOST_SIZES_KEPT:
            kept.clear()
        found = kept[host_total_kib] = self.model_copy(update=update)
        return found

    @property
    def stale_after_s(self) -> float:
        """Guest stats older than this are not trusted: three missed stats periods plus two ticks of slack."""
        return 3 * self.loop.stats_period_s + 2 * self.loop.interval_s


@functools.lru_cache(maxsize=8)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """All glob patterns as one compiled regex: called for every domain on every tick."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)").match


def _key(loc: tuple[int | str, ...]) -> str:
    parts = []
    for part in loc:
        text = str(part)
        # Quoted as a TOML basic string (JSON escapes are valid there): a name with a quote or a newline
        # must not garble the message or split it into lines that look like other errors.
        parts.append(text if text.replace("_", "").isalnum() else json.dumps(text))
    return ".".join(parts)


def describe_error(path: Path | str, err: Any) -> str:
    """One pydantic error as `file: key = value: what is wrong` (also used for simulate's scenario files).

    A rule between two keys (a key_conflict) is raised by its section and names the key to blame in ctx.
    """
    loc, value = tuple(err["loc"]), err["input"]
    if err["type"] == "key_conflict":
        loc, value = (*loc, err["ctx"]["key"]), err["ctx"]["value"]
    key = _key(loc) if loc else "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{path}: {key} = {value!r}: unknown key"
    if err["type"] == "missing":
        return f"{path}: {key}: required key is missing"
    message = err["msg"].removeprefix("Value error, ")
    return f"{path}: {key} = {value!r}: {message}"


def parse(text: str, path: Path | str = "<string>") -> Config:
    """Validate TOML text; raise ConfigError listing every problem, one per line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(describe_error(path, err) for err in exc.errors())) from None


def load(path: Path | str) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigFileError(f"{path}: is a directory, not a config file") from None
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such file") from None
    except PermissionError:
        raise ConfigFileError(f"{path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot read: {exc.strerror}") from None
    return parse(text, path)


def dump(config: Config) -> str:
    """The effective config as TOML; keys left unset (None) are omitted, as TOML has no null."""
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
