"""make-room's desk served as the daemon serves it (a thread waiting on its fds, 'ticking' after each wait), for
the unit tests of the socket and the integration test of who may ask."""

from __future__ import annotations

import select
import threading
from pathlib import Path

from memcoord.core.config import parse
from memcoord.core.model import HostStats, Snapshot, mib_to_kib
from memcoord.daemon.room import RoomDesk


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def desk_for(tmp_path: Path, clock: Clock, extra: str = "") -> RoomDesk:
    desk = RoomDesk(clock)
    config = parse(
        f'[room]\nsocket = "{tmp_path / "room.sock"}"\nhold_s = 60\n[host]\nguest_overhead_mib = 100\n{extra}'
    )
    desk.configure(config)
    return desk


def serve(desk: RoomDesk, until: threading.Event, budgets: list[int], clock: Clock) -> list[int]:
    """The daemon's side in a thread: wait on the desk's fds as the service does, and after each wait 'tick':
    answer with the next budget (the last one repeats). Returns the reserved KiB each tick saw."""
    seen: list[int] = []

    def loop() -> None:
        i = 0
        while not until.is_set():
            readable, _w, _x = select.select(desk.fds(), [], [], 0.05)
            desk.handle(set(readable))
            if any(a.reservation for a in desk._askers.values()):
                snapshot = Snapshot(HostStats(available_kib=mib_to_kib(4096), total_kib=mib_to_kib(8192)), (), 0.0)
                seen.append(desk.reserved_kib(snapshot))
                desk.answer(snapshot, budgets[min(i, len(budgets) - 1)])
                i += 1
                clock.now_s += 1.0

    threading.Thread(target=loop, daemon=True).start()
    return seen
