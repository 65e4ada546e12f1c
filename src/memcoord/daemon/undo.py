"""What `memcoord restore` undoes to: each guest's size before memcoord first changed it, kept on disk.

The record is one small JSON file in memcoord's state directory (`/var/lib/memcoord`, the unit's
StateDirectory=, so it survives daemon restarts, reboots and package upgrades; systemd passes the directory as
$STATE_DIRECTORY). Per libvirt URI, per guest: its balloon size when memcoord first decided to change it, and its
maximum then.

The order is what makes the undo trustworthy: the size is written (to a temporary file, fsync'd, renamed over
the record, the directory fsync'd) before the first setMemory to that guest is made. A crash between the two
leaves a record of a guest memcoord did not change yet, which restores it to the size it has; the other order
could leave a changed guest with no record. A guest already recorded is never recorded again: the first size
is the one before memcoord.

A record that cannot be read or does not parse is never replaced (the sizes in it would be lost): every write
reads the file again first and stops with a `RecordError` that names it. While that lasts the daemon changes
no guest it has not recorded (a change it could not undo), says so once, and tries again on later ticks.
Writers hold an flock on the directory, so `memcoord restore` dropping guests it returned and the daemon
adding new ones do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memcoord.core.model import ApplyResult, Change, Snapshot
from memcoord.core.port import Hypervisor, Over

log = logging.getLogger("memcoord")

DEFAULT_STATE_DIR = Path("/var/lib/memcoord")
FILE_NAME = "restore-sizes.json"
VERSION = 1
FILE_MODE = 0o640
DIR_MODE = 0o750


def state_dir() -> Path:
    """memcoord's state directory: $STATE_DIRECTORY (set by systemd from the unit's StateDirectory=; its first
    entry), else /var/lib/memcoord."""
    given = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(given) if given else DEFAULT_STATE_DIR


def record_path() -> Path:
    return state_dir() / FILE_NAME


class RecordError(Exception):
    """The record cannot be read, parsed or written; the message names the file and says what to do."""


@dataclass(frozen=True)
class Before:
    """A guest's size before memcoord first changed it (KiB), its maximum then, and when it was recorded."""

    size_kib: int
    max_kib: int
    recorded_at_s: float


def _entry(path: Path, where: str, raw: Any) -> Before:
    fields = ("size_kib", "max_kib", "recorded_at_s")
    if not isinstance(raw, dict) or set(raw) != set(fields):
        raise RecordError(f"{path}: {where}: expected the keys {', '.join(fields)}, found {raw!r}")
    size_kib, max_kib, at_s = (raw[f] for f in fields)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (size_kib, max_kib)):
        raise RecordError(f"{path}: {where}: size_kib and max_kib must be whole numbers above 0, found {raw!r}")
    if not isinstance(at_s, int | float) or isinstance(at_s, bool):
        raise RecordError(f"{path}: {where}: recorded_at_s must be a number, found {at_s!r}")
    return Before(size_kib, max_kib, float(at_s))


def parse(path: Path, text: str) -> dict[str, dict[str, Before]]:
    """The record's text as {uri: {guest: Before}}; RecordError naming the file and the place otherwise."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RecordError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("hosts"), dict):
        raise RecordError(f'{path}: not a memcoord size record (version {VERSION} with "hosts")')
    hosts: dict[str, dict[str, Before]] = {}
    for uri, guests in data["hosts"].items():
        if not isinstance(guests, dict):
            raise RecordError(f"{path}: hosts.{json.dumps(uri)}: expected guests by name, found {guests!r}")
        hosts[uri] = {
            name: _entry(path, f"hosts.{json.dumps(uri)}.{json.dumps(name)}", raw) for name, raw in guests.items()
        }
    return hosts


def render(hosts: Mapping[str, Mapping[str, Before]]) -> str:
    data = {
        "version": VERSION,
        "about": "each guest's size before memcoord first changed it; `memcoord restore` returns guests to it",
        "hosts": {
            uri: {
                name: {"size_kib": b.size_kib, "max_kib": b.max_kib, "recorded_at_s": round(b.recorded_at_s, 3)}
                for name, b in sorted(guests.items())
            }
            for uri, guests in sorted(hosts.items())
            if guests
        },
    }
    return json.dumps(data, indent=1) + "\n"


def _fix_message(path: Path) -> str:
    return (
        f"it is left as it is (the sizes in it are not overwritten): fix it, or move it away to start a new record "
        f"(then `memcoord restore` knows no earlier size for the guests it held); see `less {path}`"
    )


class UndoRecord:
    """The record file: read it, add guests not in it yet, drop guests handed back."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else record_path()

    def read(self) -> dict[str, dict[str, Before]]:
        """Every host's recorded guests; {} when there is no record yet. RecordError when it cannot be read."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise RecordError(f"{self.path}: cannot read the record of sizes before memcoord: {reason}") from None
        try:
            return parse(self.path, text)
        except RecordError as exc:
            raise RecordError(f"{exc}; {_fix_message(self.path)}") from None

    def stamp(self) -> tuple[int, int, int] | None:
        """What changes when the file is replaced (inode, size, mtime); None when there is none."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def add(self, uri: str, sizes: Mapping[str, Before]) -> dict[str, Before]:
        """Record the guests of sizes that are not recorded yet (a recorded size is never replaced); returns
        every guest recorded for uri afterwards. Durable when it returns; RecordError otherwise."""
        with self._locked(create=True):
            hosts = self.read()
            guests = hosts.setdefault(uri, {})
            new = {n: b for n, b in sizes.items() if n not in guests}
            if new:
                guests.update(new)
                self._write(hosts)
            return dict(guests)

    def drop(self, uri: str, names: Iterable[str]) -> None:
        """Forget guests handed back (restored): memcoord's next change to them records afresh."""
        names = set(names)
        if not names or not self.path.exists():
            return
        with self._locked(create=False):
            hosts = self.read()
            guests = hosts.get(uri, {})
            if names & set(guests):
                hosts[uri] = {n: b for n, b in guests.items() if n not in names}
                self._write(hosts)

    @contextlib.contextmanager
    def _locked(self, create: bool) -> Iterator[None]:
        directory = self.path.parent
        try:
            if create:
                directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise RecordError(f"{self.path}: cannot open its directory: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, hosts: Mapping[str, Mapping[str, Before]]) -> None:
        """Replace the file atomically and durably: temp file, fsync, rename, fsync of the directory."""
        directory = self.path.parent
        data = render(hosts).encode()
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        except OSError as exc:
            raise RecordError(f"{self.path}: cannot write the record: {exc.strerror or exc}") from None
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                if os.geteuid() == 0:
                    # root (`memcoord restore`) writes a file the daemon's user must still read and replace.
                    st = os.stat(directory)
                    os.fchown(fd, st.st_uid, st.st_gid)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RecordError(f"{self.path}: cannot write the record: {exc.strerror or exc}") from None


NOT_RECORDED = "not set: its size before memcoord could not be recorded first, so it could not be undone"


class RecordingHypervisor(Over):
    """The hypervisor port over a real one: before the first setMemory to a guest, its size is recorded.

    Sizes come from the last sample (the balloon's size when memcoord decided). A change to a guest that
    cannot be recorded is not made: its result says why (NOT_RECORDED and the record's error), the error is
    logged once, and the policy asks again next tick."""

    def __init__(self, real: Hypervisor, record: UndoRecord, uri: str) -> None:
        super().__init__(real)
        self.record = record
        self.uri = uri
        self._sizes: dict[str, tuple[int, int]] = {}  # name -> (balloon size, maximum) at the last sample
        self._recorded: set[str] = set()
        self._stamp: tuple[int, int, int] | None = None
        self._failing: str | None = None

    def sample(self, deadline_s: float | None = None, only: frozenset[str] | None = None) -> Snapshot:
        snapshot = super().sample(deadline_s, only)
        self._sizes = {d.name: (d.current_kib, d.max_kib) for d in snapshot.domains}
        return snapshot

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        refused = self._record_first(changes)
        allowed = [c for c in changes if c.domain not in refused]
        done = iter(self.real.apply(allowed, deadline_s=deadline_s) if allowed else [])
        return [ApplyResult(c, refused[c.domain], sent=False) if c.domain in refused else next(done) for c in changes]

    def _record_first(self, changes: Sequence[Change]) -> dict[str, str]:
        """Record every guest of changes not recorded yet; the guests that could not be, with the error."""
        stamp = self.record.stamp()
        if stamp != self._stamp:  # replaced by someone else (`memcoord restore` dropped guests it handed back)
            self._recorded = set()
        now_s = time.time()
        new = {}
        for c in changes:
            if c.domain not in self._recorded:
                size_kib, max_kib = self._sizes.get(c.domain, (c.from_kib, c.from_kib))
                new[c.domain] = Before(size_kib, max_kib, now_s)
        if not new:
            return {}
        try:
            self._recorded = set(self.record.add(self.uri, new))
        except RecordError as exc:
            if self._failing != str(exc):
                self._failing = str(exc)
                log.error(
                    "cannot record guests' sizes before memcoord changes them; guests not recorded yet are left as"
                    " they are until it can: %s",
                    exc,
                    extra={"MEMCOORD_EVENT": "undo-record-failed"},
                )
            # The file is as it was (it is replaced whole or not at all): the guests recorded in it still are.
            return {name: f"{NOT_RECORDED}: {exc}" for name in new}
        self._stamp = self.record.stamp()
        if self._failing is not None:
            self._failing = None
            log.info("recording guests' sizes before memcoord in %s again", self.record.path)
        return {}
