"""Helpers the real-guest scenarios share: reading a lab run's timeline, the "always" rules, retrying a run the
environment (not memcoord) broke, and checks that the recorder kept watching."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from lab import analysis
from lab.session import LabRun
from lab.timeline import Timeline

# memcoord's first ticks (the idle guests' first reclaim) before any hog starts.
BASELINE_S = 4


def hog_state(run: LabRun, i: int) -> str:
    return run.lab.guest(i).console.state.hog_state


def guest_cfg(tl: Timeline) -> dict[str, Any]:
    return dict(tl.meta["config"]["guest"])


def assert_always(tl: Timeline, oom_ok: dict[str, float] | None = None) -> None:
    """The "always" rules: no guest kernel dies, no OOM kill but a hog where expected, no guest below its floor,
    memcoord alive throughout (and a clean exit on SIGTERM)."""
    violations = analysis.invariant_violations(tl, floor_mib=guest_cfg(tl)["min_mib"], oom_ok=oom_ok)
    assert violations == [], "\n".join(violations)


FOREIGN_USE_LIMIT_MIB = 300  # host memory others may take meanwhile before a guard scenario is void


def disturbances(attempt_dir: Path, guard_sensitive: bool) -> list[dict[str, Any]]:
    """What in the environment, not in memcoord, may have caused a failed attempt."""
    json_path = attempt_dir / "timeline.json"
    if not json_path.exists():
        return []
    tl = Timeline.read_json(json_path)
    t_from_s, t_to_s = analysis.workload_window_s(tl)
    found = [e for e in tl.outages() if t_from_s - 5 <= e["t_s"] <= t_to_s]
    if guard_sensitive:
        foreign_mib = analysis.foreign_use_mib(tl, t_from_s, t_to_s)
        if foreign_mib > FOREIGN_USE_LIMIT_MIB:
            found.append({"kind": "foreign_host_memory_use", "mib": foreign_mib})
    stalls = sum(analysis.largest_drop(tl, g).gaps_skipped for g in tl.guests)
    if stalls:
        found.append({"kind": "recorder_stalled", "gaps": stalls})  # a busy host, not memcoord
    return found


def retry_once_on_outage(scenario: Callable[[Path], None], run_dir: Path, guard_sensitive: bool = False) -> None:
    """Run the scenario; if it failed while the environment broke its premise, run it once more.

    libvirtd is shared on developer hosts (other engineers' fault-injection tests stop and kill it),
    and during such an outage no coordinator can act; a guard scenario is also void when other
    processes take host memory meanwhile (the guard is about the whole host). A failure in a quiet
    environment, or a second failure, is reported as is; each attempt keeps its own artifacts
    (attempt1/, attempt2/).
    """
    for attempt in (1, 2):
        attempt_dir = run_dir / f"attempt{attempt}"
        try:
            scenario(attempt_dir)
            return
        except (AssertionError, TimeoutError, libvirt.libvirtError) as e:
            found = disturbances(attempt_dir, guard_sensitive)
            if isinstance(e, libvirt.libvirtError):
                # The lab's own libvirt calls failed: libvirtd went away under the lab itself.
                found.append({"kind": "lab_libvirt_error", "error": str(e)})
            if attempt == 2 or not found:
                if found:
                    raise AssertionError(f"{e}\n(environment disturbances during this attempt: {found[:5]})") from e
                raise
            warnings.warn(f"attempt 1 failed during {found[:3]}: {e}; retrying", stacklevel=1)


# Host memory the guard may miss by between memcoord's reading and the recorder's, a second apart: other
# processes on this shared host and QEMU's own allocations under software emulation move it by tens of MiB.
HOST_DRIFT_MIB = 50
# The recorder samples once a second; a gap longer than this means the host was too busy to watch.
MAX_SAMPLE_GAP_S = 5.0


def max_sample_gap_s(tl: Timeline, t_from_s: float, t_to_s: float) -> float:
    times = [t for t, _ in tl.host_available_mib() if t_from_s <= t <= t_to_s]
    if len(times) < 2:
        return float("inf")
    return max(b - a for a, b in itertools.pairwise(times))


def assert_watched(tl: Timeline, t_from_s: float, t_to_s: float) -> None:
    """The numbers below come from a recorder that kept sampling through the window (else they are void)."""
    gap_s = max_sample_gap_s(tl, t_from_s, t_to_s)
    assert gap_s <= MAX_SAMPLE_GAP_S, f"the recorder stalled {gap_s:.1f} s between t={t_from_s} and {t_to_s} s"


def host_lowest(tl: Timeline, t_from_s: float, t_to_s: float) -> tuple[float, float]:
    """(t_s, MiB) of the host's lowest available memory in the window."""
    return min(((t, v) for t, v in tl.host_available_mib() if t_from_s <= t <= t_to_s), key=lambda p: p[1])
