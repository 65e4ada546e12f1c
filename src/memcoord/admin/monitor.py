"""`memcoord monitor`: the status table, redrawn in place every interval until q or Ctrl-C.

curses because it is in the standard library, knows the terminal over ssh (TERM), redraws only what changed
and restores the screen on exit. It reads the same state file as `memcoord status`, so it survives daemon
restarts: while the daemon is down it says why and keeps looking.
"""

from __future__ import annotations

import contextlib
import curses
import os
import time
from pathlib import Path

from memcoord.admin import status
from memcoord.daemon import state

QUIT_KEYS = {ord("q"), ord("Q"), 27}  # q, Q, Esc


def screen_lines(state_path: Path, now_s: float | None = None) -> list[str]:
    """What one refresh shows: the status table, or why there is none."""
    try:
        reading = state.read(state_path, now_s)
    except state.StateUnavailable as exc:
        return [f"memcoord monitor: {exc}", "", f"watching {state_path}"]
    return status.render(reading.view, now_s)


def _draw(win: curses.window, lines: list[str], interval_s: float) -> None:
    height, width = win.getmaxyx()
    win.erase()
    footer = f"memcoord monitor: refresh {interval_s:g} s, {time.strftime('%H:%M:%S')}; q to quit"
    for y, line in enumerate([*lines[: max(0, height - 2)], "", footer]):
        # The bottom-right cell raises in curses even when the text fits: ignore it.
        with contextlib.suppress(curses.error):
            win.addnstr(y, 0, line, max(0, width - 1), curses.A_BOLD if y == 0 else curses.A_NORMAL)
    win.refresh()


def _loop(win: curses.window, state_path: Path, interval_s: float) -> None:
    with contextlib.suppress(curses.error):  # a terminal without an invisible cursor
        curses.curs_set(0)
    win.timeout(int(interval_s * 1000))
    while True:
        _draw(win, screen_lines(state_path), interval_s)
        key = win.getch()  # waits up to interval_s for a key; -1 on timeout
        if key in QUIT_KEYS:
            return
        if key == curses.KEY_RESIZE:
            curses.update_lines_cols()


def main(state_path: Path, interval_s: float) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        curses.wrapper(_loop, state_path, interval_s)
    return os.EX_OK
