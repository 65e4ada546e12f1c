"""The daemon's published view: one JSON file, rewritten atomically after every tick, read by status and monitor.

Why a file and not a socket: a reader never talks to the daemon, so a hung or slow `memcoord status` cannot
stall a tick, and the file survives the daemon long enough to say when and how it stopped. Why not a second
libvirt scan: status must show what the daemon saw and decided, not a later sample that could disagree.

The file is written to a temporary name in the same directory and renamed over the old one, so a reader sees
either the previous view or the new one, never half of one. Mode 0640, group from `[status] group` (root
only when empty).

Schema (version 1), sizes in KiB, times in epoch seconds:
    version, pid, running, stopped_at_s, started_at_s, updated_at_s, next_update_by_s, ticks, uri, dry_run,
    interval_s, last_tick_duration_s, hypervisor_ok, hypervisor_error, snapshot_at_s, waiting_for_hypervisor (no
    tick has reached the hypervisor since the start: published before the first tick),
    stats_period_failing {domain: error} (stats period not set yet, being retried), skipped_last_tick (changes
    the tick's deadline left for the next tick),
    config {path, loaded_at_s, reload ("never" | "ok" | "failed"), reload_error, reloads_ok, reloads_failed},
    host {available_kib, total_kib, guard_kib, headroom_kib, below_guard_kib, relief_shortfall_kib, reserved_kib (held
          above the guard for a VM about to start: make-room), pressure_some_avg10 (host PSI, percent; null: none),
          freeable_kib (what relief could take back now without any guest below its band's low line, as QEMU
          backs it), floors_kib (the managed guests' floors, summed)},
    errors {count, by_kind {kind: n}, last, last_at_s},
    domains [{name, managed, class, current_kib, max_kib, target_kib, unused_kib, usable_kib, stats_age_s,
              stats_updated_at_s (the guest's own timestamp of its stats), stats_period_error,
              last_action {action, from_kib, to_kib, reason, at_s, error, dry_run} | null,
              floor_kib, ceiling_kib (the policy's bounds; null when unmanaged),
              floor_source, ceiling_source (where each came from: "config", "metadata", "min_guarantee",
              "libvirt_max", "default"; null when unmanaged),
              excluded_by (why an unmanaged domain is left alone: "libvirt.domains", "config" or "metadata"
              for enabled = false, "unread" while its settings are not read yet, "bad-metadata" while its
              metadata has a key that cannot be believed; "no-balloon", "hostdev", "hugepages"
              or "locked" when its definition says ballooning cannot help it (model.Unballoonable); null when
              managed),
              metadata {key: value} (the valid keys of its memcoord metadata; null while unread),
              min_guarantee_kib (libvirt's <memtune><min_guarantee>, or null),
              refused (why the policy treats its last sample as no sample, class "bad-stats"; else null),
              balks (it did not give memory when last asked: libvirt refused, or its balloon did not move; it
              is asked after the other guests, for a while)}]
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
FILE_MODE = 0o640
DIR_MODE = 0o755
# A view is stale when the daemon is this late with the next one (on top of the time it announced).
STALE_GRACE_S = 10.0


class StateUnavailable(Exception):
    """There is no usable view: the daemon is not running, stopped, hung, or the file cannot be read."""


def publish(path: Path, view: dict[str, Any], gid: int | None = None) -> None:
    """Write view to path atomically (temp file + rename), mode 0640, owned by gid when given."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    data = json.dumps(view, separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        if gid is not None:
            os.fchown(fd, -1, gid)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (even one we may not signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Reading:
    """A view read from disk and whether it can be trusted as the running daemon's current one."""

    view: dict[str, Any]
    age_s: float


def read(path: Path, now_s: float | None = None, check_pid: bool = True) -> Reading:
    """The running daemon's view; raise StateUnavailable saying why when there is none worth showing."""
    now_s = time.time() if now_s is None else now_s
    try:
        view = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StateUnavailable(f"memcoord is not running (no state file at {path})") from None
    except PermissionError:
        raise StateUnavailable(
            f"{path}: permission denied (readable by root and the group in [status] group)"
        ) from None
    except (OSError, ValueError) as exc:
        raise StateUnavailable(f"{path}: cannot read the daemon's state: {exc}") from None
    if not isinstance(view, dict) or view.get("version") != SCHEMA_VERSION:
        raise StateUnavailable(f"{path}: not a memcoord state file of version {SCHEMA_VERSION}")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(view["updated_at_s"]))
    if not view.get("running", False):
        stopped = view.get("stopped_at_s") or view["updated_at_s"]
        stopped_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stopped))
        raise StateUnavailable(f"memcoord is not running (pid {view['pid']} stopped at {stopped_text})")
    if check_pid and not pid_alive(int(view["pid"])):
        raise StateUnavailable(f"memcoord is not running (pid {view['pid']} is gone; last state from {when})")
    late_s = now_s - float(view["next_update_by_s"])
    if late_s > STALE_GRACE_S:
        raise StateUnavailable(
            f"memcoord state is stale: last written {when}, {late_s:.0f} s overdue (daemon hung or stopped?)"
        )
    return Reading(view, max(0.0, now_s - float(view["updated_at_s"])))
