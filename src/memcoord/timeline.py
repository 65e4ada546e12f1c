"""Timelines: the daemon's optional per-tick record, and one reader for every timeline `memcoord plot` draws.

Why JSON lines: one self-contained line per tick, appended and flushed, so a crash loses at most a line, the
file can be tailed or grepped, and a reader can stop at any line. Sizes are KiB, as everywhere in memcoord.
A line is {"t_s", "host": {...} | null, "domains": [{name, class, current_kib, max_kib, target_kib,
unused_kib, usable_kib}], "actions": [{domain, action, from_kib, to_kib, reason, error}], "error"}.

The reader also takes the lab's timeline (tests/e2e and `make demo`): its JSON ({"meta", "rows", "events"},
sizes in MiB, t_s from the start of the run) or its CSV (rows only). Everything becomes a `Series`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("memcoord")

KIB_PER_MIB = 1024


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


@dataclass
class GuestSeries:
    t_s: list[float] = field(default_factory=list)
    actual_mib: list[float | None] = field(default_factory=list)
    unused_mib: list[float | None] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    t_s: float
    guest: str
    kind: str  # grow / reclaim / tax / clamp / oom_kill / ...
    mib: float | None = None  # where to draw it on the actual line (the new size), when known
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

    def guest(self, name: str) -> GuestSeries:
        return self.guests.setdefault(name, GuestSeries())


class TimelineError(Exception):
    """The file is not a timeline memcoord can read; the message says which line or key."""


def _mib(kib: float | None) -> float | None:
    return None if kib is None else kib / KIB_PER_MIB


def _read_memcoord_jsonl(path: Path, text: str) -> Series:
    series = Series(source="memcoord")
    t0_s: float | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            t_abs_s = float(line["t_s"])
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(text.splitlines()):
                log.warning("%s:%d: ignoring a truncated last line", path, number)
                break
            raise TimelineError(f"{path}:{number}: not a memcoord timeline line: {exc}") from None
        t0_s = t_abs_s if t0_s is None else t0_s
        t_s = t_abs_s - t0_s
        for dom in line.get("domains", []):
            g = series.guest(dom["name"])
            g.t_s.append(t_s)
            g.actual_mib.append(_mib(dom.get("current_kib")))
            g.unused_mib.append(_mib(dom.get("unused_kib")))
        for act in line.get("actions", []):
            if act.get("error") is None:
                label = f"{act['action']} {act['from_kib'] // KIB_PER_MIB}->{act['to_kib'] // KIB_PER_MIB} MiB"
                series.events.append(Event(t_s, act["domain"], act["action"], _mib(act["to_kib"]), label))
        host = line.get("host")
        if host:
            series.host_t_s.append(t_s)
            series.host_available_mib.append(host["available_kib"] / KIB_PER_MIB)
            series.host_guard_mib = host["guard_kib"] / KIB_PER_MIB
    return series


def _lab_rows(series: Series, rows: list[dict[str, Any]]) -> None:
    seen_host: set[float] = set()

    def num(value: Any) -> float | None:
        return None if value in (None, "") else float(value)

    for row in rows:
        t_s = float(row["t_s"])
        g = series.guest(str(row["guest"]))
        g.t_s.append(t_s)
        g.actual_mib.append(num(row.get("actual_mib")))
        g.unused_mib.append(num(row.get("unused_mib")))
        host_mib = num(row.get("host_available_mib"))
        if host_mib is not None and t_s not in seen_host:
            seen_host.add(t_s)
            series.host_t_s.append(t_s)
            series.host_available_mib.append(host_mib)


def _read_lab_json(data: dict[str, Any]) -> Series:
    series = Series(source="lab")
    _lab_rows(series, data["rows"])
    for e in data.get("events", []):
        if not e.get("guest"):
            continue  # host-wide marks (memcoord_start, ...)
        if e["kind"] == "action":  # memcoord's actions, read by the lab from its log
            label = f"{e['action']} {e.get('from_mib')}->{e.get('to_mib')} MiB"
            series.events.append(Event(float(e["t_s"]), e["guest"], e["action"], e.get("to_mib"), label))
        else:  # oom_kill, hog_start, hog_killed, ...
            series.events.append(Event(float(e["t_s"]), e["guest"], e["kind"], None, e["kind"]))
    guard = data.get("meta", {}).get("host_min_available_mib")
    series.host_guard_mib = float(guard) if guard else None
    return series


def read(path: Path) -> Series:
    """Any timeline memcoord knows: the daemon's JSON lines, or the lab's JSON or CSV."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TimelineError(f"{path}: cannot read: {exc.strerror}") from None
    stripped = text.lstrip()
    if stripped.startswith("t_s,") or stripped.startswith('"t_s",'):
        series = Series(source="lab")
        _lab_rows(series, list(csv.DictReader(text.splitlines())))
        return series
    if stripped.startswith("{"):
        first = stripped.split("\n", 1)[0]
        try:
            head = json.loads(first)
        except ValueError:
            head = None
        if isinstance(head, dict) and "t_s" in head:
            return _read_memcoord_jsonl(path, text)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TimelineError(f"{path}: not JSON lines nor JSON: {exc}") from None
        if isinstance(data, dict) and "rows" in data:
            return _read_lab_json(data)
    raise TimelineError(f"{path}: not a timeline (memcoord JSON lines, or the lab's JSON or CSV)")
