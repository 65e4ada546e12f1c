"""The timeline: the daemon's optional per-tick record, its writer and its one reader.

Why JSON lines: one self-contained line per tick, appended and flushed, so a crash loses at most a line, the
file can be tailed or grepped, and a reader can stop at any line. Sizes are KiB, as everywhere in memcoord.
A line is {"t_s", "dry_run", "host": {...} | null, "domains": [{name, class, current_kib, max_kib, target_kib,
unused_kib, usable_kib}], "actions": [{domain, action, from_kib, to_kib, reason, rule, error}], "error"}; t_s is the
tick's wall-clock time (epoch).

This is the only timeline format memcoord reads. Tools that watch the daemon (the lab, the fault tests) read
its actions from here (`parse_line`, `actions`), not from its log lines; what they record themselves they
turn into a `Series` for the plot on their side.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from memcoord.core.model import KIB_PER_MIB, Action, Outcome, Rule

log = logging.getLogger("memcoord")


class Recorder:
    """Appends one JSON line per tick to path; moves the file to PATH.1 once it passes max_bytes."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # 0640 like the state file: it says as much about the guests.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        return self._file

    def write(self, line: dict[str, Any]) -> None:
        f = self._open()
        f.write(json.dumps(line, separators=(",", ":")) + "\n")
        f.flush()
        if f.tell() >= self.max_bytes:
            self.close()
            self.path.replace(self.path.with_name(self.path.name + ".1"))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def line_from_view(view: dict[str, Any], actions: list[dict[str, Any]]) -> dict[str, Any]:
    """The timeline line for one tick: the published view's sizes plus this tick's actions only."""
    return {
        "t_s": view["updated_at_s"],
        "dry_run": view["dry_run"],
        "host": view["host"],
        "domains": [
            {k: d[k] for k in ("name", "class", "current_kib", "max_kib", "target_kib", "unused_kib", "usable_kib")}
            for d in view["domains"]
        ]
        if view["hypervisor_ok"]
        else [],
        "actions": actions,
        "error": view["hypervisor_error"],
    }


# -- reading ---------------------------------------------------------------------------------------------


class TimelineError(Exception):
    """The file is not a timeline memcoord can read; the message says which line or key."""


@dataclass(frozen=True)
class TimelineAction:
    """One setMemory of one tick, as the timeline records it; t_s is the tick's wall-clock time (epoch)."""

    t_s: float
    domain: str
    action: Action
    from_kib: int
    to_kib: int
    reason: str
    error: str | None
    dry_run: bool
    outcome: Outcome = Outcome.SET
    rule: Rule | None = None  # the policy's step that moved the guest (`model.Reason.rule`)

    @property
    def applied(self) -> bool:
        """setMemory was called and worked (not a dry run, not failed, not of unknown outcome)."""
        return self.error is None and not self.dry_run


def parse_line(raw: str, where: str = "<timeline>") -> dict[str, Any]:
    """One timeline line as a dict; raises TimelineError naming where (file:line) and what is wrong."""
    try:
        line = json.loads(raw)
        float(line["t_s"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TimelineError(f"{where}: not a timeline line (memcoord's JSON lines): {exc}") from None
    if not isinstance(line, dict):
        raise TimelineError(f"{where}: not a timeline line (memcoord's JSON lines): {raw[:80]!r}")
    return line


def actions(line: dict[str, Any], where: str = "<timeline>") -> list[TimelineAction]:
    """The actions of one parsed line; an action kind this memcoord does not know is an error, not a skip."""
    out = []
    for act in line.get("actions", []):
        try:
            kind = Action(act["action"])  # type: ignore[call-arg]  # a lookup by value; mypy sees Action.__new__
        except ValueError:
            raise TimelineError(f"{where}: actions: unknown action {act['action']!r}") from None
        # Lines from before outcomes were recorded: an error meant a failure.
        outcome_text = act.get("outcome") or (Outcome.SET if act.get("error") is None else Outcome.FAILED)
        try:
            outcome = Outcome(outcome_text)
        except ValueError:
            raise TimelineError(f"{where}: actions: unknown outcome {outcome_text!r}") from None
        rule_text = act.get("rule")
        try:
            rule = None if rule_text is None else Rule(rule_text)  # type: ignore[call-arg]  # a lookup by value
        except ValueError:
            raise TimelineError(f"{where}: actions: unknown rule {rule_text!r}") from None
        out.append(
            TimelineAction(
                t_s=float(line["t_s"]),
                domain=act["domain"],
                action=kind,
                from_kib=int(act["from_kib"]),
                to_kib=int(act["to_kib"]),
                reason=act.get("reason", ""),
                error=act.get("error"),
                dry_run=bool(line.get("dry_run", False)),
                outcome=outcome,
                rule=rule,
            )
        )
    return out


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a timeline file; a truncated last line (the daemon was writing it) is dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TimelineError(f"{path}: cannot read: {exc.strerror}") from None
    raws = text.splitlines()
    lines = []
    for number, raw in enumerate(raws, 1):
        if not raw.strip():
            continue
        try:
            lines.append(parse_line(raw, f"{path}:{number}"))
        except TimelineError:
            if number == len(raws) and lines and raw.startswith("{"):
                log.warning("%s:%d: ignoring a truncated last line", path, number)
                break
            raise
    return lines


@dataclass
class GuestSeries:
    """One guest over time, in MiB; `extra` holds lines a tool adds (the lab's hog, the simulator's used)."""

    t_s: list[float] = field(default_factory=list)
    current_mib: list[float | None] = field(default_factory=list)
    unused_mib: list[float | None] = field(default_factory=list)
    extra: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    t_s: float
    guest: str
    kind: str  # an Action's value, or a tool's own event (oom_kill, hog_start, ...)
    mib: float | None = None  # where to draw it on the current line (the new size), when known
    label: str = ""


@dataclass
class Series:
    """A timeline in plotting terms: seconds from the start, MiB, per guest; events; host available."""

    source: str
    guests: dict[str, GuestSeries] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    host_t_s: list[float] = field(default_factory=list)
    host_available_mib: list[float] = field(default_factory=list)
    host_guard_mib: float | None = None
    # Horizontal lines on every guest panel, when the source knows them (the lab's max and floor).
    max_mib: float | None = None
    floor_mib: float | None = None

    def guest(self, name: str) -> GuestSeries:
        return self.guests.setdefault(name, GuestSeries())


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / KIB_PER_MIB


def series(lines: list[dict[str, Any]], where: str = "<timeline>") -> Series:
    """The daemon's timeline lines in plotting terms: t_s from the first line; applied actions as events."""
    out = Series(source="memcoord")
    t0_s = float(lines[0]["t_s"]) if lines else 0.0
    for line in lines:
        t_s = float(line["t_s"]) - t0_s
        for dom in line.get("domains", []):
            g = out.guest(dom["name"])
            g.t_s.append(t_s)
            g.current_mib.append(_mib(dom.get("current_kib")))
            g.unused_mib.append(_mib(dom.get("unused_kib")))
        for act in actions(line, where):
            if act.error is None:
                label = f"{act.action} {act.from_kib // KIB_PER_MIB}->{act.to_kib // KIB_PER_MIB} MiB"
                out.events.append(Event(t_s, act.domain, str(act.action), _mib(act.to_kib), label))
        host = line.get("host")
        if host:
            out.host_t_s.append(t_s)
            out.host_available_mib.append(host["available_kib"] / KIB_PER_MIB)
            out.host_guard_mib = host["guard_kib"] / KIB_PER_MIB
    return out


def read(path: Path) -> Series:
    """The daemon's timeline file (JSON lines) as a Series."""
    return series(read_lines(path), str(path))
