"""The lab's "always" rules on hand-made timelines: what counts as a guest that stopped running."""

from __future__ import annotations

from lab.analysis import invariant_violations
from lab.timeline import Timeline


def _timeline(alive: list[bool], paused: list[bool]) -> Timeline:
    rows = [
        {"t_s": float(t), "guest": "g", "alive": a, "paused": p, "current_mib": 512.0, "coordinator_alive": True}
        for t, (a, p) in enumerate(zip(alive, paused, strict=True))
    ]
    return Timeline(rows=rows)


def test_a_guest_a_user_paused_is_not_a_dead_guest():
    tl = _timeline(alive=[True, False, False, True], paused=[False, True, True, False])
    assert invariant_violations(tl, floor_mib=256) == []


def test_a_guest_that_stopped_running_otherwise_is_a_violation():
    # Not running and not paused by a user: its kernel died, QEMU paused it (I/O error, watchdog), or it stopped.
    tl = _timeline(alive=[True, False, True], paused=[False, False, False])
    assert invariant_violations(tl, floor_mib=256) == [
        "g: not running from t=1.0 s (guest kernel died or domain stopped)"
    ]
