"""`memcoord status`: the running daemon's published view as a table for humans or JSON for scripts.

It reads the state file only (see state.py), never libvirt, so it shows what the daemon saw and decided.
`render` is shared with `memcoord monitor`, so both always show the same thing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from memcoord.admin.cliargs import DEFAULT_CONFIG_PATH
from memcoord.core.model import Unballoonable
from memcoord.daemon import state

KIB_PER_MIB = 1024


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / KIB_PER_MIB:.0f}"


def _size(kib: int) -> str:
    mib = kib / KIB_PER_MIB
    return f"{mib / 1024:.1f} GiB" if mib >= 10 * 1024 else f"{mib:.0f} MiB"


def _clock(epoch_s: float | None) -> str:
    return "-" if epoch_s is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s))


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _last_action(action: dict[str, Any] | None) -> str:
    if action is None:
        return "-"
    text = (
        f"{time.strftime('%H:%M:%S', time.localtime(action['at_s']))} {action['action']} "
        f"{_mib(action['from_kib'])}->{_mib(action['to_kib'])}: {action['reason']}"
    )
    if action.get("dry_run"):
        text += " (dry run)"
    if action.get("error"):
        verdict = "OUTCOME UNKNOWN" if action.get("outcome") == "unknown" else "FAILED"
        text += f" {verdict}: {action['error']}"
    return text


def _bound(d: dict[str, Any], which: str) -> str:
    """A floor or ceiling with where it came from: "1024 metadata"; "-" when unmanaged."""
    kib = d.get(f"{which}_kib")
    if kib is None:
        return "-"
    source = d.get(f"{which}_source")
    return f"{_mib(kib)} {source.replace('_', ' ')}" if source else _mib(kib)


def _class(d: dict[str, Any]) -> str:
    excluded_by = d.get("excluded_by")
    return f"{d['class']} ({excluded_by})" if excluded_by and d["class"] == "unmanaged" else d["class"]


def _refusals(view: dict[str, Any]) -> list[str]:
    """One line per guest whose stats the policy refuses (.get: an older daemon's state file has no reason)."""
    return [
        f"IMPOSSIBLE STATS from {d['name']} (treated as no stats, left alone): {d['refused']}"
        for d in view["domains"]
        if d.get("refused")
    ]


def _balking(view: dict[str, Any]) -> list[str]:
    """One line per guest that gives last for not giving when asked (.get: an older daemon's state file)."""
    return [
        f"GIVES LAST: {d['name']} did not give memory when asked (libvirt refused, or its balloon did not move)"
        for d in view["domains"]
        if d.get("balks")
    ]


COLUMNS = (
    "DOMAIN",
    "CLASS",
    "CURRENT",
    "MAX",
    "TARGET",
    "UNUSED",
    "USABLE",
    "STATS AGE",
    "FLOOR FROM",
    "CEILING FROM",
    "LAST ACTION (MiB)",
)


def render(view: dict[str, Any], now_s: float | None = None) -> list[str]:
    """The view as lines of text: a header of daemon, config, host and errors, then one row per guest."""
    now_s = time.time() if now_s is None else now_s
    lines = []
    tick = view["last_tick_duration_s"]
    tick_text = f", last took {tick * 1000:.0f} ms" if tick is not None else ""
    dry = "; DRY RUN (nothing applied)" if view["dry_run"] else ""
    lines.append(
        f"memcoord pid {view['pid']}, up {_duration(now_s - view['started_at_s'])}, {view['ticks']} ticks "
        f"every {view['interval_s']:g} s{tick_text}; {view['uri']}{dry}"
    )
    cfg = view["config"]
    counts = f"({cfg['reloads_ok']} OK, {cfg['reloads_failed']} failed)"
    reload_text = {"never": "no reload yet", "ok": f"last reload OK {counts}"}.get(
        cfg["reload"], f"LAST RELOAD FAILED, running the previous config {counts}: {cfg['reload_error']}"
    )
    lines.append(f"config {cfg['path']}, loaded {_clock(cfg['loaded_at_s'])}; {reload_text}")
    host = view["host"]
    if host is not None:
        lines.append(
            f"host available {_size(host['available_kib'])} of {_size(host['total_kib'])}, "
            f"guard {_size(host['guard_kib'])}, room to grow {_size(host['headroom_kib'])}"
            + (
                ""
                if host.get("pressure_some_avg10") is None
                else f", memory pressure {host['pressure_some_avg10']:.1f} %"
            )
        )
        if host.get("freeable_kib") is not None:  # absent in a state file written by an older daemon
            lines.append(
                f"could free {_size(host['freeable_kib'])} now without any guest below its low line; "
                f"guests' floors sum to {_size(host['floors_kib'])}"
            )
        if host.get("reserved_kib"):
            lines.append(f"holding {_size(host['reserved_kib'])} above the guard for a VM about to start (make-room)")
        if host.get("below_guard_kib"):
            line = f"HOST BELOW ITS GUARD by {_size(host['below_guard_kib'])}: relieving"
            if host.get("relief_shortfall_kib"):
                line += f", {_size(host['relief_shortfall_kib'])} more than the guests can give back"
            lines.append(line)
    if view.get("waiting_for_hypervisor"):
        why = f": {view['hypervisor_error']}" if view["hypervisor_error"] else ""
        lines.append(f"waiting for libvirt ({view['uri']}): no tick has reached it yet{why}")
    elif not view["hypervisor_ok"]:
        lines.append(f"HYPERVISOR UNREACHABLE: {view['hypervisor_error']} (guests below as last seen)")
    # .get: a state file written by an older daemon lacks these.
    for name, error in sorted(view.get("stats_period_failing", {}).items()):
        lines.append(f"STATS PERIOD NOT SET on {name} (left alone, retrying with backoff): {error}")
    lines += _refusals(view)
    lines += _balking(view)
    if view.get("skipped_last_tick"):
        lines.append(f"LAST TICK RAN OUT OF TIME: {view['skipped_last_tick']} change(s) left for the next tick")
    errors = view["errors"]
    if errors["count"]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(errors["by_kind"].items()))
        lines.append(f"errors {errors['count']} ({kinds}); last at {_clock(errors['last_at_s'])}: {errors['last']}")
    else:
        lines.append("errors 0")
    lines.append(f"state of {_clock(view['updated_at_s'])} ({now_s - view['updated_at_s']:.1f} s ago); sizes in MiB")
    lines.append("")
    rows = [COLUMNS]
    for d in view["domains"]:
        rows.append(
            (
                d["name"],
                _class(d),
                _mib(d["current_kib"]),
                _mib(d["max_kib"]),
                _mib(d["target_kib"]),
                _mib(d["unused_kib"]),
                _mib(d["usable_kib"]),
                "-" if d["stats_age_s"] is None else f"{d['stats_age_s']:g}s",
                _bound(d, "floor"),
                _bound(d, "ceiling"),
                _last_action(d["last_action"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    numeric = {2, 3, 4, 5, 6, 7}
    for r in rows:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))]
        lines.append("  ".join([*cells, r[-1]]))
    if not view["domains"]:
        lines.append("(no running domain)")
    for d in view["domains"]:
        if d.get("excluded_by") in _UNBALLOONABLE:
            lines.append(f"{d['name']}: left alone, ballooning cannot help: {_UNBALLOONABLE[d['excluded_by']]}")
    return lines


_UNBALLOONABLE = {str(kind): kind.why for kind in Unballoonable}


def default_state_path(config_path: Path | None) -> Path:
    """The state file named by the config ([status] path), /etc/memcoord.toml if present, else the default."""
    from memcoord.core import config as config_mod

    if config_path is None and DEFAULT_CONFIG_PATH.exists():
        config_path = DEFAULT_CONFIG_PATH
    if config_path is None:
        return Path(config_mod.StatusConfig().path)
    try:
        return Path(config_mod.load(config_path).status.path)
    except config_mod.ConfigError as exc:
        # A broken file is when an admin asks what the daemon runs (it keeps its last good config): find the
        # state file anyway, from the file's own status.path if it has a readable one.
        path = _status_path_of_broken_file(config_path)
        first_error = str(exc).splitlines()[0]
        print(f"memcoord: config not usable ({first_error}); reading {path}", file=sys.stderr)
        return path


def _status_path_of_broken_file(config_path: Path) -> Path:
    import tomllib

    from memcoord.core import config as config_mod

    try:
        path = tomllib.loads(config_path.read_text(encoding="utf-8")).get("status", {}).get("path")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        path = None
    return Path(path) if isinstance(path, str) and path else Path(config_mod.StatusConfig().path)


def main(state_path: Path, as_json: bool) -> int:
    """Print the view; exit 69 (EX_UNAVAILABLE) with the reason on stderr when the daemon is not running."""
    try:
        reading = state.read(state_path)
    except state.StateUnavailable as exc:
        print(f"memcoord: {exc}", file=sys.stderr)
        return os.EX_UNAVAILABLE
    try:
        if as_json:
            json.dump({**reading.view, "age_s": round(reading.age_s, 3)}, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            sys.stdout.write("\n".join(render(reading.view)) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `memcoord status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return os.EX_OK
