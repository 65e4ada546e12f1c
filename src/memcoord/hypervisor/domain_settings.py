"""Per-domain settings that travel with the VM: memcoord's element in the domain's libvirt `<metadata>`,
libvirt's own `<memtune><min_guarantee>`, whether its balloon deflates on the guest's OOM, and whether ballooning
can help it at all (a balloon device; no VFIO device, hugepages or locked memory).

The bulk stats call does not return a domain's definition, and reading it (XMLDesc) for every guest on every
tick would cost a round trip per guest on a host with thousands. So the adapter keeps what it read per domain
UUID (`SettingsCache`) and reads a domain again only when libvirt says its definition or metadata changed (an
event), after a reconnect (events may have been missed), or on a slow timer. Parsing is pure: a domain's XML
in, its settings and the problems with them out; the caller logs each problem once.

The keys of memcoord's element are checked by the model that checks a `[domains."NAME"]` table (DomainOverride),
so that both accept the same values with the same messages (check_metadata).

Which key wins (config file, metadata, min_guarantee, default) is the config's business (Config.floor/ceiling,
config.py).
"""

from __future__ import annotations

import difflib
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from memcoord.core.config import Config, DomainOverride
from memcoord.core.model import DomainSettings, Unballoonable
from memcoord.core.port import Hypervisor, HypervisorError

log = logging.getLogger("memcoord")

# memcoord's XML namespace in a domain's <metadata>. libvirt asks each application for a namespace URI of its own;
# the project owns no domain name, so it is a UUID URN (RFC 9562): unique without anyone's registry, and never
# taken over by whoever buys a lapsed domain. README "Settings that follow the VM" says so.
NAMESPACE = "urn:uuid:cb4040ed-7dd6-4676-9bfe-b48496c781ce"
# Namespaces of earlier releases, still read (NAMESPACE wins when a domain has both), so that settings written
# under them are not silently dropped; each read says how to move them. The placeholder of 0.3 is read in 0.4 only.
OLD_NAMESPACES = ("https://memcoord.example/xmlns/1",)
PREFIX = "memcoord"
ELEMENT = "settings"
# A domain's settings are read again this often even without an event (a missed one, a driver without them).
REFRESH_S = 300.0

_UNIT_KIB = {
    "b": 1 / 1024,
    "bytes": 1 / 1024,
    "kb": 1000 / 1024,
    "k": 1,
    "kib": 1,
    "mb": 1000**2 / 1024,
    "m": 1024,
    "mib": 1024,
    "gb": 1000**3 / 1024,
    "g": 1024**2,
    "gib": 1024**2,
    "tb": 1000**4 / 1024,
    "t": 1024**3,
    "tib": 1024**3,
}


@dataclass(frozen=True)
class Parsed:
    """A domain's settings and what was wrong in them (each problem one line naming domain, element, value)."""

    settings: DomainSettings
    problems: tuple[str, ...] = ()


def _element(key: str) -> str:
    return f"<{PREFIX}:{ELEMENT}><{key}>"


def _why(err: Any, known: Iterable[str]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key (known: {', '.join(known)})"
    if kind == "int_parsing" or kind == "int_from_float":
        return "not a whole number (MiB)"
    if kind == "bool_parsing":
        return "not true or false"
    return str(err["msg"]).removeprefix("Value error, ")


@dataclass(frozen=True)
class MetadataCheck:
    """What the model makes of the keys of memcoord's metadata element: the valid values, and one problem per
    invalid key (not naming the domain: the caller puts its name in front)."""

    values: Mapping[str, Any]
    problems: tuple[str, ...] = ()


def check_metadata(data: Mapping[str, str]) -> MetadataCheck:
    """The element's keys (their texts) checked by the model that validates a `[domains."NAME"]` table."""
    problems = []
    try:
        override = DomainOverride.model_validate(dict(data), strict=False)
    except ValidationError as exc:
        dropped: set[str] = set()
        for err in exc.errors():
            # A rule between keys names the key it blames in ctx (as config's own rules do).
            key = err["ctx"]["key"] if err["type"] == "key_conflict" else str(err["loc"][0]) if err["loc"] else ""
            if key == "max_mib" and err["type"] == "value_error" and "min_mib" in data:
                # min above max: either may be the typo, so neither is believed.
                dropped |= {"min_mib", "max_mib"}
                problems.append(
                    f"metadata {_element('min_mib')} = {data['min_mib']!r} is above {_element('max_mib')}"
                    f" = {data['max_mib']!r}: both ignored; memcoord leaves the guest alone until the metadata is fixed"
                )
                continue
            dropped.add(key)
            problems.append(
                f"metadata {_element(key)} = {data.get(key, '')!r}: {_why(err, DomainOverride.model_fields)};"
                " memcoord leaves the guest alone until the metadata is fixed"
            )
        kept = {k: v for k, v in data.items() if k not in dropped}
        try:
            override = DomainOverride.model_validate(kept, strict=False)
        except ValidationError:  # what is left still breaks a rule between keys: believe none of it
            problems.append(f"metadata <{PREFIX}:{ELEMENT}>: its keys contradict each other; all ignored")
            return MetadataCheck({}, tuple(problems))
    return MetadataCheck({k: getattr(override, k) for k in override.model_fields_set}, tuple(problems))


def _metadata(name: str, root: ET.Element) -> tuple[dict[str, Any], list[str], list[str]]:
    """The valid per-domain keys of memcoord's metadata element, one problem per invalid one, and notes that
    invalidate nothing (settings under an old namespace)."""
    for namespace in (NAMESPACE, *OLD_NAMESPACES):
        element = root.find(f"./metadata/{{{namespace}}}{ELEMENT}")
        if element is not None:
            break
    else:
        return {}, [], []
    notes = []
    if namespace != NAMESPACE:
        notes.append(
            f"{name}: memcoord metadata under the old namespace {namespace}, read in this release only: move it with"
            f" virsh metadata {name} {NAMESPACE} --key {PREFIX} --set '<{ELEMENT}>...</{ELEMENT}>' --live --config,"
            f" then virsh metadata {name} {namespace} --remove --live --config"
        )
    problems = []
    data: dict[str, str] = {}
    duplicates: set[str] = set()
    for attr, value in element.attrib.items():
        problems.append(f"{name}: metadata <{PREFIX}:{ELEMENT} {attr}={value!r}>: attributes are not read, ignored")
    for child in element:
        ns, _, key = child.tag.rpartition("}")
        ns = ns.lstrip("{")
        text = "".join(child.itertext()).strip()
        # `virsh metadata --set` puts the children in memcoord's namespace; a hand-written one may not.
        if ns and ns != namespace:
            problems.append(f"{name}: metadata {_element(key)} in namespace {ns!r}: unknown key, ignored")
        elif key in data or key in duplicates:
            problems.append(f"{name}: metadata {_element(key)} = {text!r}: given twice; both ignored")
            duplicates.add(key)
            data.pop(key, None)
        else:
            data[key] = text
    # The same model validates a [domains."NAME"] table and the metadata.
    checked = check_metadata(data)
    return dict(checked.values), problems + [f"{name}: {problem}" for problem in checked.problems], notes


def _size_kib(element: ET.Element) -> int | None:
    """A libvirt size element (`<memory unit='MiB'>512</memory>`) in KiB; None when it is not a size."""
    text, unit = (element.text or "").strip(), element.get("unit", "KiB")
    factor = _UNIT_KIB.get(unit.lower())
    if factor is None or not (text.isascii() and text.isdigit()):
        return None
    return int(int(text) * factor)


def _min_guarantee_kib(name: str, root: ET.Element) -> tuple[int | None, list[str]]:
    element = root.find("./memtune/min_guarantee")
    if element is None:
        return None, []
    kib = _size_kib(element)
    if kib is None:
        text, unit = (element.text or "").strip(), element.get("unit", "KiB")
        return None, [f"{name}: <memtune><min_guarantee unit={unit!r}> = {text!r}: not a size; ignored"]
    return kib or None, []


def start_memory_kib(xml_text: str) -> tuple[str, int]:
    """(name, KiB) of what a domain starts with, from its libvirt XML: `<currentMemory>` (the balloon's size
    once its driver runs), else `<memory>`. ValueError saying what is missing or wrong."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ValueError(f"domain XML does not parse: {exc}") from None
    name = (root.findtext("name") or "").strip()
    for tag in ("currentMemory", "memory"):
        element = root.find(tag)
        if element is not None:
            kib = _size_kib(element)
            if not kib:
                raise ValueError(f"domain XML <{tag}> = {(element.text or '').strip()!r}: not a size")
            return name, kib
    raise ValueError("domain XML has no <currentMemory> nor <memory>")


def unballoonable(root: ET.Element) -> Unballoonable | None:
    """Why ballooning cannot help the guest this definition describes, or None when it can."""
    balloon = root.find("./devices/memballoon")
    if balloon is None or balloon.get("model") == "none":
        return Unballoonable.NO_BALLOON
    # PCI and mediated devices go through VFIO (so does an SR-IOV interface of type hostdev); USB and SCSI
    # passthrough do not pin guest memory.
    if root.find("./devices/interface[@type='hostdev']") is not None or any(
        h.get("type") in ("pci", "mdev") for h in root.iterfind("./devices/hostdev")
    ):
        return Unballoonable.HOSTDEV
    if root.find("./memoryBacking/hugepages") is not None:
        return Unballoonable.HUGEPAGES
    if root.find("./memoryBacking/locked") is not None:
        return Unballoonable.LOCKED
    return None


def parse_domain_xml(name: str, xml_text: str) -> Parsed:
    """A domain's settings from its libvirt XML (virDomainGetXMLDesc). Never raises: what cannot be read is a
    problem; a problem in memcoord's metadata makes the settings `metadata_invalid` (the guest is left alone)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        return Parsed(
            DomainSettings(metadata_invalid=True),
            (f"{name}: its libvirt XML does not parse ({exc}); memcoord leaves the guest alone",),
        )
    metadata, problems, notes = _metadata(name, root)
    min_guarantee_kib, mg_problems = _min_guarantee_kib(name, root)
    settings = DomainSettings(
        metadata=MappingProxyType(metadata),
        min_guarantee_kib=min_guarantee_kib,
        metadata_invalid=bool(problems),
        deflate_on_oom=root.find("./devices/memballoon[@autodeflate='on']") is not None,
        unballoonable=unballoonable(root),
    )
    return Parsed(settings, tuple(problems + notes + mg_problems))


@dataclass
class _Entry:
    settings: DomainSettings
    read_at_s: float
    logged: frozenset[str] = frozenset()


@dataclass
class SettingsCache:
    """Settings by domain UUID: read once, then again when marked changed (events, from libvirt's event thread)
    or older than refresh_s. Times are the caller's monotonic seconds."""

    refresh_s: float = REFRESH_S
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _changed: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def mark_changed(self, uuid: str) -> None:
        """libvirt said this domain's metadata or definition changed (safe from any thread)."""
        with self._lock:
            self._changed.add(uuid)

    def mark_all_changed(self) -> None:
        """A new connection: events in between were missed."""
        with self._lock:
            self._changed |= set(self._entries)

    def due(self, uuids: Iterable[str], now_s: float) -> list[str]:
        """The domains to read now, most urgent first: never read, changed, then the oldest past refresh_s.
        Their changed marks are taken now, so an event that comes during the read marks them again."""
        uuids = list(uuids)
        with self._lock:
            changed, self._changed = self._changed & set(uuids), self._changed - set(uuids)
        unread = [u for u in uuids if u not in self._entries]
        marked = [u for u in uuids if u in changed and u in self._entries]
        old = sorted(
            (u for u in uuids if u in self._entries and u not in changed) if self.refresh_s else (),
            key=lambda u: self._entries[u].read_at_s,
        )
        old = [u for u in old if now_s - self._entries[u].read_at_s >= self.refresh_s]
        return unread + marked + old

    def retry(self, uuids: Iterable[str]) -> None:
        """Domains taken by due() but not read (the tick ran out of time, or the read failed): next tick."""
        with self._lock:
            self._changed |= {u for u in uuids if u in self._entries}

    def store(self, uuid: str, parsed: Parsed, now_s: float) -> list[str]:
        """Keep what was read; returns the problems not reported for this domain before (report them)."""
        entry = self._entries.get(uuid)
        logged = entry.logged if entry is not None else frozenset()
        new = [p for p in parsed.problems if p not in logged]
        self._entries[uuid] = _Entry(parsed.settings, now_s, frozenset(parsed.problems))
        return new

    def get(self, uuid: str) -> DomainSettings | None:
        entry = self._entries.get(uuid)
        return None if entry is None else entry.settings

    def keep_only(self, uuids: Collection[str]) -> None:
        """Forget domains no longer running (a domain started again is read again)."""
        for uuid in set(self._entries) - set(uuids):
            del self._entries[uuid]
        with self._lock:
            self._changed &= set(uuids)


def unmatched_overrides(config: Config, domain_names: Collection[str]) -> list[str]:
    """One warning per `[domains."NAME"]` table that names no domain libvirt knows (running or defined): a
    typo in an exclusion would otherwise silently protect nothing."""
    warnings = []
    for name in sorted(config.domains):
        if name in domain_names:
            continue
        text = f'[domains."{name}"] matches no running or defined domain on {config.libvirt.uri}: it has no effect'
        if any(c in name for c in "*?["):
            text += " (domain names there are exact, not globs)"
        close = difflib.get_close_matches(name, list(domain_names), n=1)
        if close:
            text += f"; did you mean {close[0]!r}?"
        warnings.append(text)
    return warnings


def warn_unmatched_overrides(hypervisor: Hypervisor, config: Config, deadline_s: float | None = None) -> bool:
    """Log unmatched_overrides() once (at start and after each reload); False when the hypervisor could not list
    its domains, so the caller tries again on a later tick."""
    if not config.domains:
        return True
    try:
        names = hypervisor.domain_names(deadline_s=deadline_s)
    except HypervisorError:
        return False
    for warning in unmatched_overrides(config, names):
        log.warning("%s", warning, extra={"MEMCOORD_EVENT": "unmatched-override"})
    return True
