"""Per-domain settings that travel with the VM: memcoord's element in the domain's libvirt `<metadata>`,
libvirt's own `<memtune><min_guarantee>`, and whether its balloon deflates on the guest's OOM.

The bulk stats call does not return a domain's definition, and reading it (XMLDesc) for every guest on every
tick would cost a round trip per guest on a host with thousands. So the adapter keeps what it read per domain
UUID (`SettingsCache`) and reads a domain again only when libvirt says its definition or metadata changed (an
event), after a reconnect (events may have been missed), or on a slow timer. Parsing is pure: a domain's XML
in, its settings and the problems with them out; the caller logs each problem once.

The keys of memcoord's element are checked by the model that checks a `[domains."NAME"]` table (DomainOverride),
so that both accept the same values with the same messages. That model needs pydantic, which the daemon never
imports (config_view.py): the check is a function of the keys' texts alone (check_metadata), which commands and
tests run in-process and `memcoord run` runs in a child process (ChildMetadataValidator), kept by content.

Which key wins (config file, metadata, min_guarantee, default) is the config's business (ConfigRules.floor/ceiling,
config_rules.py).
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from memcoord.core.config_rules import VALIDATE_COMMAND
from memcoord.core.model import DomainSettings
from memcoord.core.port import Hypervisor, HypervisorError

if TYPE_CHECKING:
    from memcoord.core.config import Config

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
# A metadata checking child imports pydantic and builds the models (a tenth of a second or more on a loaded
# host); one that takes longer than this is given up on, and none is started for a while after a failure.
METADATA_CHECK_TIMEOUT_S = 5.0
METADATA_RETRY_S = 10.0
# A child is not started with less time than this left before the tick's deadline (it costs 0.1-0.3 s, more on a
# loaded host): the domain is read again next tick.
METADATA_CHECK_MIN_S = 0.5
# Distinct metadata contents kept checked (a few hundred bytes each).
METADATA_CACHE_SIZE = 1024

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
    # The metadata could not be checked (not that it is wrong): read the domain again on the next tick.
    recheck: bool = False


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
    """What the models make of the keys of memcoord's metadata element: the valid values, and one problem per
    invalid key. The problems do not name the domain (the caller puts its name in front): the same keys and
    values check the same on every guest, so one check serves all guests that carry them."""

    values: Mapping[str, Any]
    problems: tuple[str, ...] = ()


class MetadataUnchecked(Exception):
    """The metadata could not be checked at all (the checking process failed or took too long); the message
    says why. Not a verdict on the metadata: it is checked again on a later read."""


class MetadataValidator(Protocol):
    def __call__(self, data: Mapping[str, str], deadline_s: float | None = None) -> MetadataCheck:
        """Check the element's keys (text values); raises MetadataUnchecked when it cannot, never more than
        deadline_s (time.monotonic()) allows."""
        ...


def check_metadata(data: Mapping[str, str], deadline_s: float | None = None) -> MetadataCheck:
    """The check itself, with the model that validates a `[domains."NAME"]` table (DomainOverride), in this
    process. It imports pydantic: `memcoord run` does not, and checks through ChildMetadataValidator instead.
    deadline_s is not needed here (no call that can hang)."""
    if not data:  # nothing to check, and no reason to load the models
        return MetadataCheck({})
    from pydantic import ValidationError

    from memcoord.core.config import DomainOverride

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


class ChildMetadataValidator:
    """check_metadata in a short-lived child process (`python -m memcoord.daemon.validate --metadata`, the same
    interpreter), for `memcoord run`, which never imports pydantic (config_view.py) and is given this one.

    A child costs a tenth of a second or more, and the settings are read within a small share of a tick
    (SETTINGS_READ_BUDGET_S in hypervisor/libvirt.py); many guests carry the same metadata, so checks are kept
    by content. A child that fails or takes longer than timeout_s raises MetadataUnchecked; for retry_s after
    that no new one is started (a broken interpreter must not cost every tick a process), the same reason is
    raised at once.
    """

    def __init__(
        self,
        timeout_s: float = METADATA_CHECK_TIMEOUT_S,
        retry_s: float = METADATA_RETRY_S,
        command: Sequence[str] = (*VALIDATE_COMMAND, "--metadata"),
        cache_size: int = METADATA_CACHE_SIZE,
    ) -> None:
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.command = tuple(command)
        self.cache_size = cache_size
        self.children = 0  # processes started: what the cache saves is visible to tests and benchmarks
        self._checked: dict[tuple[tuple[str, str], ...], MetadataCheck] = {}
        self._failed: tuple[float, str] | None = None  # (monotonic seconds when retried, why)

    def __call__(self, data: Mapping[str, str], deadline_s: float | None = None) -> MetadataCheck:
        if not data:
            return MetadataCheck({})
        key = tuple(sorted(data.items()))
        checked = self._checked.get(key)
        if checked is not None:
            return checked
        now_s = time.monotonic()
        if self._failed is not None and now_s < self._failed[0]:
            raise MetadataUnchecked(self._failed[1])
        timeout_s = self.timeout_s if deadline_s is None else min(self.timeout_s, deadline_s - now_s)
        if timeout_s < METADATA_CHECK_MIN_S:
            raise MetadataUnchecked("the tick's deadline left no time for it")
        try:
            checked = self._run(data, timeout_s)
        except MetadataUnchecked as exc:
            if timeout_s >= self.timeout_s:  # a child given its full time failed: not one every tick
                self._failed = (time.monotonic() + self.retry_s, str(exc))
            raise
        self._failed = None
        if len(self._checked) >= self.cache_size:
            del self._checked[next(iter(self._checked))]  # the oldest
        self._checked[key] = checked
        return checked

    def _run(self, data: Mapping[str, str], timeout_s: float) -> MetadataCheck:
        self.children += 1
        what = "the metadata checking process"
        try:
            done = subprocess.run(
                self.command, input=json.dumps(dict(data)).encode(), capture_output=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise MetadataUnchecked(f"{what} took more than {timeout_s:.1f} s") from None
        except OSError as exc:
            raise MetadataUnchecked(f"cannot start {what} ({self.command[0]}): {exc.strerror or exc}") from None
        try:
            result = json.loads(done.stdout)
        except ValueError:
            result = None
        if done.returncode == 0 and isinstance(result, dict):
            values, problems = result.get("values"), result.get("problems")
            if (
                isinstance(values, dict)
                and set(values) <= set(data)
                and all(isinstance(v, int | float) for v in values.values())  # bool is an int
                and isinstance(problems, list)
                and all(isinstance(p, str) for p in problems)
            ):
                return MetadataCheck(values, tuple(problems))
        stderr = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MetadataUnchecked(
            f"{what} exited with {done.returncode}" + (f": {stderr[-1]}" if stderr else " without a result")
        )


def _metadata(
    name: str, root: ET.Element, validate: MetadataValidator, deadline_s: float | None
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The valid per-domain keys of memcoord's metadata element, one problem per invalid one, and notes that
    invalidate nothing (settings under an old namespace). Raises MetadataUnchecked when validate does."""
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
    checked = validate(data, deadline_s=deadline_s)
    return dict(checked.values), problems + [f"{name}: {problem}" for problem in checked.problems], notes


def _min_guarantee_kib(name: str, root: ET.Element) -> tuple[int | None, list[str]]:
    element = root.find("./memtune/min_guarantee")
    if element is None:
        return None, []
    text, unit = (element.text or "").strip(), element.get("unit", "KiB")
    factor = _UNIT_KIB.get(unit.lower())
    if factor is None or not (text.isascii() and text.isdigit()):
        return None, [f"{name}: <memtune><min_guarantee unit={unit!r}> = {text!r}: not a size; ignored"]
    return int(int(text) * factor) or None, []


def parse_domain_xml(
    name: str, xml_text: str, validate: MetadataValidator = check_metadata, deadline_s: float | None = None
) -> Parsed:
    """A domain's settings from its libvirt XML (virDomainGetXMLDesc). Never raises: what cannot be read is a
    problem; a problem in memcoord's metadata makes the settings `metadata_invalid` (the guest is left alone).
    validate checks the metadata's keys (check_metadata in this process, or a ChildMetadataValidator); when it
    cannot, the guest is left alone and the result says `recheck`."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        return Parsed(
            DomainSettings(metadata_invalid=True),
            (f"{name}: its libvirt XML does not parse ({exc}); memcoord leaves the guest alone",),
        )
    try:
        metadata, problems, notes = _metadata(name, root, validate, deadline_s)
    except MetadataUnchecked as exc:
        return Parsed(
            DomainSettings(metadata_invalid=True),
            (
                f"{name}: its memcoord metadata could not be checked ({exc}); memcoord leaves the guest alone and"
                " reads it again next tick",
            ),
            recheck=True,
        )
    min_guarantee_kib, mg_problems = _min_guarantee_kib(name, root)
    settings = DomainSettings(
        metadata=MappingProxyType(metadata),
        min_guarantee_kib=min_guarantee_kib,
        metadata_invalid=bool(problems),
        deflate_on_oom=root.find("./devices/memballoon[@autodeflate='on']") is not None,
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
        """Keep what was read; returns the problems not reported for this domain before (report them).

        Metadata that could not be checked this time (`recheck`) keeps the settings last read for the domain,
        if any: a guest memcoord manages must not become unmanaged, its grant and pending target forgotten,
        because a checking process was slow once."""
        entry = self._entries.get(uuid)
        logged = entry.logged if entry is not None else frozenset()
        new = [p for p in parsed.problems if p not in logged]
        settings = entry.settings if parsed.recheck and entry is not None else parsed.settings
        self._entries[uuid] = _Entry(settings, now_s, frozenset(parsed.problems))
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
        import difflib  # only when there is a name to match: the daemon rarely needs it

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
