"""`make demo`: watch memcoord move memory between 4 real guests, live, then keep the picture.

One guest runs a hog that grows to a fixed size, holds it, then exits; three stay idle. The
shipped memcoord config (restricted to the demo's guests) grows the hungry guest, taxes and
reclaims the idle ones, and takes the memory back when the hog is gone. A table refreshes in
place once a second; at the end the timeline (CSV, JSON, PNG) is written to artifacts/demo/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from lab import analysis
from lab.image import build_image
from lab.session import LabRun
from lab.timeline import ACTION_EVENT, Timeline

REPO_ROOT = Path(__file__).resolve().parent.parent
BAR_WIDTH = 30


def _bar(current_mib: float, max_mib: int) -> str:
    filled = round(BAR_WIDTH * min(1.0, current_mib / max_mib))
    return "#" * filled + "." * (BAR_WIDTH - filled)


class LiveView:
    """A table redrawn in place on a terminal; a short line every few seconds otherwise (CI logs)."""

    def __init__(self, run: LabRun, stream: Any = sys.stdout) -> None:
        self.run = run
        self.stream = stream
        self.tty = stream.isatty()
        self.drawn_lines = 0
        self.last_plain_s = 0.0

    def draw(self, phase: str) -> None:
        latest = self.run.latest()
        if not latest:
            return
        host_mib = next(iter(latest.values()))["host_available_mib"]
        mc = self.run.memcoord
        actions = self.run.timeline.events_of(ACTION_EVENT)
        t_s = self.run.t_s()
        if not self.tty:
            if time.monotonic() - self.last_plain_s >= 5:
                self.last_plain_s = time.monotonic()
                cells = " ".join(f"{g}={r['current_mib']:.0f}" for g, r in sorted(latest.items()))
                print(f"[{t_s:5.0f} s] {phase}: {cells} MiB; memcoord actions {len(actions)}", file=self.stream)
            return
        status = mc.status if mc and mc.alive() else "not running"
        lines = [
            f"memcoord demo  t={t_s:5.0f} s  phase: {phase}",
            f"host available {host_mib:7.0f} MiB   memcoord actions so far: {len(actions)}",
            f"memcoord status: {status}",
            "",
            f"{'guest':<16} {'current':>7} {'unused':>7} {'hog':>6} {'hog state':<9} {'OOM':>3}  balloon (of max)",
        ]
        for guest, r in sorted(latest.items()):
            unused = "-" if r["unused_mib"] is None else f"{r['unused_mib']:.0f}"
            lines.append(
                f"{guest:<16} {r['current_mib']:7.0f} {unused:>7} {r['hog_mib']:6d} {r['hog_state']:<9} "
                f"{r['oom_kills']:3d}  {_bar(r['current_mib'], self.run.lab.max_mib)}"
            )
        lines.append("")
        for a in actions[-4:]:
            lines.append(f"  t={a['t_s']:5.0f} s  {a['action']:<7} {a['guest']} {a['from_mib']} -> {a['to_mib']} MiB")
        lines += [""] * (4 - min(4, len(actions)))
        # A line wider than the terminal wraps and breaks the cursor-up count: cut to the width.
        columns = shutil.get_terminal_size((120, 24)).columns - 1
        lines = [line[:columns] for line in lines]
        out = []
        if self.drawn_lines:
            out.append(f"\x1b[{self.drawn_lines}F")  # back to the table's first line
        out += [f"\x1b[2K{line}\n" for line in lines]
        self.stream.write("".join(out))
        self.stream.flush()
        self.drawn_lines = len(lines)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class DemoFailed(RuntimeError):
    """The demo did not show what its title says (an OOM kill it did not mean, a grower that fell short)."""


def _oom_kills(run: LabRun) -> list[str]:
    """Every OOM kill the guests' kernels reported so far (live, from the consoles): the demo means none."""
    return [
        f"{g.name}: OOM killed {k.comm} (pid {k.pid}) with the guest at "
        f"{run.latest().get(g.name, {}).get('current_mib', float('nan')):.0f} MiB"
        for g in run.lab.guests
        for k in g.console.state.oom_kills
    ]


def failures(tl: Timeline, grower: str, grow_mib: int) -> list[str]:
    """What the demo promised and did not show: no OOM kill anywhere, the grower's hog holding grow_mib."""
    out = [
        f"{e['guest']}: OOM killed {e['comm']} (pid {e['pid']}) at t={e['t_s']:.0f} s with the guest at "
        f"{analysis.value_at(tl, e['guest'], 'current_mib', e['t_s']):.0f} MiB"
        for e in tl.events_of("oom_kill")
    ]
    held = [e for e in tl.events_of("hog_holding", grower) if e["hog_mib"] >= grow_mib]
    if not held:
        reached = max((e["hog_mib"] for e in tl.events if e.get("guest") == grower and "hog_mib" in e), default=0)
        out.append(f"{grower}'s hog never held {grow_mib} MiB (it reached {reached} MiB)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__.splitlines()[0])
    p.add_argument("--prefix", default="mclab-demo-", help="domain name prefix (only these are touched)")
    p.add_argument("--guests", type=int, default=4)
    p.add_argument("--max-mib", type=int, default=2048)
    p.add_argument("--current-mib", type=int, default=512)
    p.add_argument("--grow-mib", type=int, default=1280, help="what the hog grows to in guest 1")
    p.add_argument("--hold-s", type=int, default=20, help="how long it holds that before it exits")
    p.add_argument("--page-us", type=int, default=100, help="us per 4 KiB page (100 = 40 MiB/s)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts" / "demo")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo needs root (qemu:///system)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)

    print("building the guest image (cached after the first run) ...", flush=True)
    image = build_image()
    print(f"booting {args.guests} guests ({args.current_mib} MiB, max {args.max_mib} MiB) ...", flush=True)
    t0 = time.monotonic()
    run = LabRun(
        args.prefix,
        args.out,
        n=args.guests,
        max_mib=args.max_mib,
        current_mib=args.current_mib,
        image=image,
        title=f"memcoord demo: guest 1 grows to {args.grow_mib} MiB, holds {args.hold_s} s, exits",
    )
    interrupted = False
    failed: list[str] = []
    stopped_by = ""
    try:
        with run:
            print(f"guests up in {time.monotonic() - t0:.0f} s; starting memcoord\n", flush=True)
            run.start_memcoord()
            view = LiveView(run)
            grower = run.lab.names[0]

            def phase(name: str, until: Any, timeout_s: float) -> None:
                deadline = time.monotonic() + timeout_s
                while not until() and time.monotonic() < deadline:
                    view.draw(name)
                    if not (run.memcoord and run.memcoord.alive()):
                        raise RuntimeError("memcoord exited; see its log in " + str(args.out))
                    if kills := _oom_kills(run):
                        raise DemoFailed("; ".join(kills))
                    time.sleep(1)
                view.draw(name)

            phase("idle: memcoord reclaims what the guests do not use", lambda: False, 8)
            run.lab.start_hog(1, "hold", size_mib=args.grow_mib, hold_s=args.hold_s, page_us=args.page_us)
            run.mark("workload", grower, what=f"hog hold {args.grow_mib} MiB")
            state = run.lab.guest(1).console.state
            phase(f"{grower} grows to {args.grow_mib} MiB", lambda: state.hog_state != "growing", 180)
            phase(f"{grower} holds {args.grow_mib} MiB", lambda: state.hog_state != "holding", args.hold_s + 30)
            back_mib = args.current_mib + 100
            phase(
                f"{grower}'s hog exited: memcoord takes the memory back",
                lambda: run.latest()[grower]["current_mib"] <= back_mib,
                120,
            )
            phase("settled", lambda: False, 5)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: cleaning up", flush=True)
    except DemoFailed as e:
        stopped_by = str(e)  # the lab is down now: the timeline says the rest
    tl = run.timeline
    print()
    grower = f"{args.prefix}1"
    if not interrupted:
        failed = failures(tl, grower, args.grow_mib)
        if stopped_by and not tl.events_of("oom_kill"):
            failed.insert(0, stopped_by)  # the kill came after the recorder's last sample
        t_exit_s = analysis.first_event_t_s(tl, "hog_exit", grower)
        print(f"{grower}: peak {analysis.peak(tl, grower, 'current_mib'):.0f} MiB", end="")
        if t_exit_s is not None:
            t_back_s = analysis.first_t_s(tl, grower, "current_mib", lambda v: v <= args.current_mib + 100, t_exit_s)
            if t_back_s is not None:
                print(
                    f", back to {args.current_mib + 100} MiB {t_back_s - t_exit_s:.0f} s after its hog exited", end=""
                )
        print(f"; memcoord made {len(tl.events_of(ACTION_EVENT))} changes")
    for path in run.saved:
        print(f"wrote {path}")
    print(f"memcoord log: {args.out / 'memcoord.log'}")
    if interrupted:
        return 130
    if failed:
        for line in failed:
            print(f"DEMO FAILED: {line}", file=sys.stderr)
        return 1
    print(f"demo ok: {grower}'s hog held {args.grow_mib} MiB, no guest process was OOM killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
