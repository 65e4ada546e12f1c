"""What the config means, written once for both forms of a loaded config: the pydantic models (config.py) and
the read-only view the daemon runs on (config_view.py). Nothing here imports pydantic.

The daemon does not import pydantic (about 13 MiB of its memory with the models): a short-lived child process
validates the file with the models and hands the result over as JSON. The rules a running daemon applies to a
validated config (floors, ceilings, which domains it manages, the metrics endpoint's address) live here, as
mixins over whichever object holds the values, so that the two forms cannot drift apart.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from memcoord.core.model import NO_SETTINGS, DomainSettings, mib_to_kib

DEFAULT_PATH = Path("/etc/memcoord.toml")
DEFAULT_LISTEN = "127.0.0.1:9749"
# A guest's weight in a scarce split when neither the config file nor its metadata sets one.
DEFAULT_WEIGHT = 100
# In the JSON a validating child hands the daemon (config.to_tree), each section's list of the keys the file set.
FIELDS_SET_KEY = "__fields_set__"
# The validating child: this interpreter (the daemon's venv), without the working directory on its path (-P), so
# that it validates with the memcoord the daemon runs and not with whatever a `memcoord/` in the cwd holds.
VALIDATE_COMMAND = (sys.executable, "-P", "-m", "memcoord.daemon.validate")


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


class ConfigRules:
    """The whole config's behaviour; the holder has the sections libvirt, loop, guest, host and domains (name ->
    a section with model_fields_set, the keys the file set)."""

    __slots__ = ()

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
        if not _matcher(tuple(self.libvirt.domains))(name):
            return "libvirt.domains"
        if _matcher(tuple(self.libvirt.exclude))(name):
            return "libvirt.exclude"
        if settings is None:
            return "unread"
        if settings.unballoonable is not None:
            return str(settings.unballoonable)
        enabled = self.domain_setting(name, "enabled", settings)
        if settings.metadata_invalid and (enabled is None or enabled[1] is not Source.CONFIG):
            return "bad-metadata"
        return None if enabled is None or enabled[0] else str(enabled[1])

    def floor(self, name: str, settings: DomainSettings | None = NO_SETTINGS) -> tuple[int, Source]:
        """The lowest target for a domain (KiB) and where it came from: min_mib, else min_guarantee, else
        guest.min_mib."""
        default_kib = mib_to_kib(self.guest.min_mib)
        found = self.domain_setting(name, "min_mib", settings)
        if found is not None and found[1] is Source.CONFIG:
            return mib_to_kib(found[0]), found[1]
        # Only the config file may set a floor below guest.min_mib: a VM's own definition (metadata, min_guarantee)
        # travels between hosts and templates, and must not let memcoord squeeze it below the host's own floor.
        # A source below it is passed over for the next one.
        candidates = [] if found is None else [(mib_to_kib(found[0]), found[1])]
        if settings is not None and settings.min_guarantee_kib:
            candidates.append((settings.min_guarantee_kib, Source.MIN_GUARANTEE))
        for floor_kib, source in candidates:
            if floor_kib >= default_kib:
                return floor_kib, source
        return default_kib, Source.DEFAULT

    def floor_kib(self, name: str, settings: DomainSettings | None = NO_SETTINGS) -> int:
        return self.floor(name, settings)[0]

    def ceiling(self, name: str, max_kib: int, settings: DomainSettings | None = NO_SETTINGS) -> tuple[int, Source]:
        """The highest target for a domain (KiB): its libvirt maximum, lowered by a max_mib, and where it came
        from (a max_mib at or above the maximum does not bind: the maximum does)."""
        found = self.domain_setting(name, "max_mib", settings)
        if found is None:
            return max_kib, Source.LIBVIRT_MAX
        ceiling_kib = mib_to_kib(found[0])
        if found[1] is not Source.CONFIG:  # as for the floor: the VM's definition never goes below guest.min_mib
            ceiling_kib = max(ceiling_kib, mib_to_kib(self.guest.min_mib))
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
        if "target_available_mib" in self.host.model_fields_set or self.host.profile != Profile.PRODUCTION:
            return self.host.target_available_mib
        return max(
            self.guard_mib(host_total_kib) + PRODUCTION_TARGET_ABOVE_GUARD_MIB,
            int(host_total_kib * PRODUCTION_TARGET_PCT / 100) // 1024,
        )

    def peak_hold_s(self) -> float:
        """guest.peak_hold_s from the file, else the profile's."""
        if "peak_hold_s" in self.guest.model_fields_set or self.host.profile != Profile.PRODUCTION:
            return self.guest.peak_hold_s
        return PRODUCTION_PEAK_HOLD_S

    def for_host(self, host_total_kib: int) -> Any:
        """This config with what scales with the host resolved into the keys the policy reads: the guard
        (host.min_available_mib) and the profile's comfort target and peak hold. Itself when nothing changes."""
        host = {
            "min_available_mib": self.guard_mib(host_total_kib),
            "target_available_mib": self.target_available_mib(host_total_kib),
        }
        host = {k: v for k, v in host.items() if getattr(self.host, k) != v}
        guest = {"peak_hold_s": self.peak_hold_s()} if self.peak_hold_s() != self.guest.peak_hold_s else {}
        update = {}
        if host:
            update["host"] = self.host.model_copy(update=host)
        if guest:
            update["guest"] = self.guest.model_copy(update=guest)
        return self.model_copy(update=update) if update else self

    @property
    def stale_after_s(self) -> float:
        """Guest stats older than this are not trusted: three missed stats periods plus two ticks of slack."""
        return 3 * self.loop.stats_period_s + 2 * self.loop.interval_s


class MetricsRules:
    """The [metrics] section's behaviour; the holder has listen, address, port and certfile."""

    __slots__ = ()

    @property
    def bind(self) -> tuple[str, int]:
        """(address, port) to listen on, from listen or from address and port."""
        return split_listen(self.listen) if self.listen != DEFAULT_LISTEN else (self.address, self.port)

    @property
    def tls(self) -> bool:
        return bool(self.certfile)


@functools.lru_cache(maxsize=8)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], re.Match[str] | None]:
    """All glob patterns as one compiled regex: called for every domain on every tick."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns) or "(?!)").match


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def check_host(host: str) -> None:
    """An IP address (v4 or v6) or a host name; a name is resolved only when the endpoint starts."""
    import ipaddress  # only with a listen address other than the default: the daemon rarely needs it

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
        import ipaddress

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
