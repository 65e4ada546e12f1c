"""`memcoord restore`: set guests back to the size they had before memcoord first changed them (or to their
libvirt maximum, or a given size), through the host guard.

For uninstalling memcoord or handing a guest back to manual control. The sizes before memcoord come from the
record the daemon keeps (undo.py); a guest it has no size for was never changed by memcoord and is left as it
is. Restore only grows: a guest above its recorded size (memcoord grew it for a need) stays where it is, since
its programs may be using that memory. A guest fully restored is dropped from the record: memcoord's next
change to it records afresh. Growth is limited to what the host has
above its guard (host.min_available_mib or _pct, counting memory memcoord's policy would keep for guests that are
using theirs, as the policy's own guard does), shared out in a stated order: the guests in the order they are
named, or by name when none is named. A guest that cannot be fully restored gets what there is and is reported
with what is missing, and the command exits 75 (EX_TEMPFAIL) so that scripts notice and can retry once the
host has memory again. Each setMemory is logged like every action memcoord takes (`restore`, its own MESSAGE_ID),
to the journal when there is one.

A running memcoord service would move restored guests again: restore checks the daemon's state file and
systemd, and refuses (exit 77) for guests the running daemon manages, unless --force.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memcoord.admin.plan import sample_with_settings, unreachable
from memcoord.core.config import Config
from memcoord.core.model import Action, ApplyResult, Change, DomainStats, Snapshot, kib_to_mib, mib_to_kib
from memcoord.core.policy import host_headroom_kib
from memcoord.core.port import HypervisorError
from memcoord.daemon import journal
from memcoord.daemon.undo import Before, RecordError, UndoRecord

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSTEMD_UNIT = "memcoord.service"


class RestoreError(Exception):
    """The command cannot start: the message says which domain and why; `exit_code` says how to exit."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Wanted:
    """A guest and the size it should be restored to, what that size is (for the journal's reason), and what was
    adjusted on the way (clamps)."""

    dom: DomainStats
    target_kib: int
    notes: tuple[str, ...] = ()
    what: str = "its maximum"


@dataclass(frozen=True)
class Step:
    """What restore does to one guest: from_kib -> to_kib, of target_kib wanted (to_kib < target_kib: short)."""

    name: str
    from_kib: int
    to_kib: int
    target_kib: int
    max_kib: int
    notes: tuple[str, ...] = ()
    what: str = "its maximum"

    @property
    def short_kib(self) -> int:
        return self.target_kib - self.to_kib

    @property
    def change(self) -> Change | None:
        if self.to_kib == self.from_kib:
            return None
        short = f", {_mib(self.short_kib)} short: host guard" if self.short_kib else ""
        return Change(self.name, Action.RESTORE, self.from_kib, self.to_kib, f"memcoord restore to {self.what}{short}")


def _mib(kib: int) -> str:
    return f"{kib_to_mib(kib):.0f} MiB"


def choose(snapshot: Snapshot, config: Config, names: Sequence[str]) -> list[DomainStats]:
    """The guests to restore, in serving order: those named, in the order named, or every managed running
    domain by name. RestoreError (exit 66) names every domain that is not running or has no balloon."""
    by_name = {d.name: d for d in snapshot.domains}
    if not names:
        return sorted((d for d in snapshot.domains if config.manages(d.name, d.settings)), key=lambda d: d.name)
    missing = [n for n in dict.fromkeys(names) if n not in by_name]
    if missing:
        running = ", ".join(sorted(by_name)) or "none"
        raise RestoreError(
            "; ".join(f"no running domain with a balloon named {n!r}" for n in missing)
            + f" (running with a balloon: {running})",
            os.EX_NOINPUT,
        )
    return [by_name[n] for n in dict.fromkeys(names)]


def wanted(
    doms: Sequence[DomainStats], to_mib: int | None, to_max: bool, before: Mapping[str, Before], record: Path
) -> list[Wanted]:
    """Each guest's target: its size before memcoord (before; none: left as it is, saying so), its libvirt
    maximum (to_max), or to_mib; clamped to its maximum, saying so. Restore only ever grows a guest: a target
    below its current size (memcoord grew it for a need; a --to typo such as 40 for 4096) leaves it as it is,
    saying so, instead of inflating its balloon over memory it may use."""
    out = []
    for dom in doms:
        if to_max:
            out.append(Wanted(dom, max(dom.max_kib, dom.current_kib)))
            continue
        if to_mib is not None:
            target_kib, what, asked = mib_to_kib(to_mib), f"{to_mib} MiB (--to)", f"--to {to_mib} MiB"
        elif dom.name in before:
            target_kib = before[dom.name].size_kib
            what = asked = f"its size before memcoord, {_mib(target_kib)}"
        else:
            note = (
                f"no size before memcoord recorded for it in {record} (memcoord never changed it): left as it is;"
                " --to-max restores it to its maximum"
            )
            out.append(Wanted(dom, dom.current_kib, (note,), "its current size"))
            continue
        notes: tuple[str, ...] = ()
        if target_kib > dom.max_kib:
            notes = (f"{asked} is above its maximum {_mib(dom.max_kib)}: restoring to {_mib(dom.max_kib)}",)
            target_kib = dom.max_kib
        if target_kib < dom.current_kib:
            notes = (
                f"{asked} is below its current size {_mib(dom.current_kib)}: restore never lowers a guest,"
                " left as it is",
            )
            target_kib = dom.current_kib
        out.append(Wanted(dom, target_kib, notes, what))
    return out


def through_guard(wants: Sequence[Wanted], budget_kib: int) -> list[Step]:
    """Growth served in order from budget_kib (what the host has above its guard), whole MiB. Nothing is
    lowered."""
    steps = []
    left_kib = max(0, budget_kib)
    for w in wants:
        from_kib = w.dom.current_kib
        target_kib = max(w.target_kib, from_kib)
        grow_kib = target_kib - from_kib
        got_kib = grow_kib if grow_kib <= left_kib else left_kib - left_kib % 1024
        left_kib -= got_kib
        to_kib = from_kib + got_kib  # never lower: a target below the current size is left alone
        steps.append(Step(w.dom.name, from_kib, to_kib, target_kib, w.dom.max_kib, w.notes, w.what))
    return steps


# -- a running service would undo it ------------------------------------------------------------------------
def daemon_managed(view: Mapping[str, Any] | None, names: Sequence[str], config: Config) -> list[str]:
    """Of names, those a running memcoord would move: by its published view when there is one (a daemon on
    another URI, or in dry run, moves none of them; one that has not seen a guest yet goes by its config's
    patterns), else (the service seen running by systemd only) by this config."""
    if view is None:
        return [n for n in names if config.manages(n)]
    if view.get("dry_run") or view.get("uri") != config.libvirt.uri:
        return []
    seen = {d["name"]: bool(d.get("managed")) for d in view.get("domains", [])}
    try:
        daemon_config = Config.model_validate(view["config"]["effective"])
    except (KeyError, TypeError, ValueError):
        daemon_config = config
    return [n for n in names if seen.get(n, daemon_config.manages(n))]


def running_daemon(config: Config) -> tuple[bool, Mapping[str, Any] | None, str]:
    """Whether memcoord's service runs, its published view if any, and how that was found."""
    from memcoord.daemon import state

    with contextlib.suppress(state.StateUnavailable):
        reading = state.read(Path(config.status.path))
        return True, reading.view, f"its state file {config.status.path} (pid {reading.view['pid']})"
    if _systemd_says_active():
        return True, None, f"systemd ({SYSTEMD_UNIT} is active)"
    return False, None, ""


def _systemd_says_active() -> bool:
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():  # systemd is not PID 1 here
        return False
    try:
        proc = subprocess.run(
            [systemctl, "is-active", SYSTEMD_UNIT], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.stdout.strip() in ("active", "activating", "reloading")


# -- the command --------------------------------------------------------------------------------------------
def log_setup() -> None:
    """Action records go to the journal where there is one (any process may write to it; `journalctl
    MEMCOORD_ACTION=restore` finds them), else to stderr."""
    handler: logging.Handler
    try:
        if not JOURNAL_SOCKET.exists():
            raise ImportError
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="memcoord")
        handler.setFormatter(logging.Formatter("%(message)s"))
    except ImportError:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("memcoord: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def describe(step: Step, result: ApplyResult | None, dry_run: bool) -> str:
    """One line per guest for stdout."""
    line = f"{step.name}: "
    if result is None:
        line += f"already at {_mib(step.to_kib)}"
    else:
        line += f"{_mib(step.from_kib)} -> {_mib(step.to_kib)}"
        if result.error is not None:
            line += f": {'OUTCOME UNKNOWN' if result.unknown else 'FAILED'}: {result.error}"
    if step.short_kib:
        line += f", {_mib(step.short_kib)} short of {_mib(step.target_kib)} (host guard)"
    if dry_run and result is not None:
        line += " (dry run, not applied)"
    return "; ".join([line, *step.notes])


def main(
    config: Config,
    names: Sequence[str],
    to_mib: int | None,
    dry_run: bool,
    force: bool,
    connect: Any = None,
    to_max: bool = False,
    record: UndoRecord | None = None,
) -> int:
    """What `memcoord restore` does once its arguments are parsed; returns the exit code."""
    if connect is None:
        from memcoord.daemon.connect import connect
    record = record if record is not None else UndoRecord()
    uri = config.libvirt.uri
    try:
        hv = connect(uri)
    except HypervisorError as exc:
        print(unreachable(uri, exc), file=sys.stderr)
        return os.EX_UNAVAILABLE
    try:
        return _restore(hv, config, names, to_mib, to_max, dry_run, force, record)
    except RestoreError as exc:
        print(f"memcoord: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        hv.close()


def _recorded(record: UndoRecord, uri: str, needed: bool) -> tuple[dict[str, Before], bool]:
    """The sizes before memcoord for uri, and whether the record can be updated. A record that cannot be read
    stops the default restore (exit 65: it is what it restores to); --to and --to-max go on without it."""
    try:
        return record.read().get(uri, {}), True
    except RecordError as exc:
        if needed:
            raise RestoreError(
                f"{exc}; nothing changed (--to-max restores to the maximum without it)", os.EX_DATAERR
            ) from None
        print(f"memcoord: warning: {exc}; restored guests stay in it", file=sys.stderr)
        return {}, False


def _restore(
    hv: Any,
    config: Config,
    names: Sequence[str],
    to_mib: int | None,
    to_max: bool,
    dry_run: bool,
    force: bool,
    record: UndoRecord,
) -> int:
    uri = config.libvirt.uri
    before, updatable = _recorded(record, uri, needed=not to_max and to_mib is None)
    try:
        snapshot = sample_with_settings(hv)
    except HypervisorError as exc:
        raise RestoreError(unreachable(uri, exc).removeprefix("memcoord: "), os.EX_UNAVAILABLE) from None
    unread = sorted(d.name for d in snapshot.domains if d.settings is None and config.manages(d.name))
    if unread:
        # Their metadata may exclude them: they are not restored, and the exit code says the job is not done.
        print(f"memcoord: settings of {', '.join(unread)} not read from libvirt yet: not restored", file=sys.stderr)
    doms = choose(snapshot, config, names)
    running, view, how = running_daemon(config)
    if running:
        conflicting = daemon_managed(view, [d.name for d in doms], config)
        if conflicting:
            message = (
                f"memcoord is running ({how}) and would move {', '.join(conflicting)} again: stop memcoord first, "
                'or exclude these guests ([domains."NAME"] enabled = false, then systemctl reload memcoord)'
            )
            if not force:
                raise RestoreError(message + "; --force restores them anyway", os.EX_NOPERM)
            print(f"memcoord: warning: {message}", file=sys.stderr)
    guard_mib = config.guard_mib(snapshot.host.total_kib)
    budget_kib = host_headroom_kib(snapshot, config.for_host(snapshot.host.total_kib))
    steps = through_guard(wanted(doms, to_mib, to_max, before, record.path), budget_kib)
    order = ", ".join(s.name for s in steps) or "none"
    print(
        f"{uri}: host available {_mib(snapshot.host.available_kib)}, guard {guard_mib} MiB: "
        f"{_mib(max(0, budget_kib))} to grow guests by, served in this order: {order}"
    )
    log_setup()
    changes = [c for s in steps if (c := s.change) is not None]
    results = [ApplyResult(c) for c in changes] if dry_run else hv.apply(changes)
    by_name = {r.change.domain: r for r in results}
    for result in results:
        journal.action(result, dry_run)
    for step in steps:
        print(describe(step, by_name.get(step.name), dry_run))
    short = [s for s in steps if s.short_kib]
    failed = [r for r in results if r.error is not None]
    if updatable and not dry_run:
        handed_back = [s.name for s in steps if not s.short_kib and (s.name not in by_name or by_name[s.name].ok)]
        try:
            record.drop(uri, handed_back)
        except RecordError as exc:
            print(f"memcoord: warning: {exc}; restored guests stay in it", file=sys.stderr)
    if not short and not failed:
        return os.EX_TEMPFAIL if unread and not names else os.EX_OK
    problems = [f"{s.name} {_mib(s.short_kib)} short" for s in short]
    problems += [f"{r.change.domain} setMemory {'outcome unknown' if r.unknown else 'failed'}" for r in failed]
    print(
        f"memcoord: {len(short) + len(failed)} of {len(steps)} guests not fully restored: {', '.join(problems)}"
        + (
            f" (host available {_mib(snapshot.host.available_kib)}, guard {guard_mib} MiB; run again once the host "
            "has memory, or lower host.min_available_mib)"
            if short
            else ""
        ),
        file=sys.stderr,
    )
    return os.EX_TEMPFAIL
