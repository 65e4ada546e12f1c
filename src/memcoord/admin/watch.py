"""The watching subcommands (`status`, `monitor`, `plot`), registered on the CLI by one call from cli.py.

They live here, not in cli.py, so the CLI stays a thin list of commands; cli.py imports this module, never the
other way round (shared argument types are in cliargs.py). Heavy imports (curses, matplotlib) happen only when
the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from memcoord.admin.cliargs import positive_float


def _state_path(args: argparse.Namespace) -> Path:
    from memcoord.admin import status

    return args.state if args.state is not None else status.default_state_path(args.config)


def _cmd_status(args: argparse.Namespace) -> int:
    from memcoord.admin import status

    return status.main(_state_path(args), args.json)


def _cmd_monitor(args: argparse.Namespace) -> int:
    from memcoord.admin import monitor

    return monitor.main(_state_path(args), args.interval)


def _cmd_plot(args: argparse.Namespace) -> int:
    from memcoord.admin import plot

    out = args.output if args.output is not None else args.timeline.with_suffix(".png")
    return plot.main(args.timeline, out, args.title)


def _state_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", type=Path, metavar="PATH", help="state file (default: [status] path)")
    parser.add_argument(
        "--config", type=Path, default=None, help="config file naming the state file (default: /etc/memcoord.toml)"
    )


def add_commands(sub: Any) -> None:
    """Register status, monitor and plot on the `memcoord` subparsers."""
    status = sub.add_parser(
        "status",
        help="the running daemon's view: guests, host (what it could free now, the floors' sum), config, errors; "
        "exit 69 if down",
    )
    status.add_argument("--json", action="store_true", help="the whole view as JSON, for scripts")
    _state_args(status)
    status.set_defaults(func=_cmd_status)

    monitor = sub.add_parser("monitor", help="the status table, refreshed in place (q or Ctrl-C to quit)")
    monitor.add_argument("--interval", type=positive_float, default=2.0, metavar="S", help="seconds (%(default)s)")
    _state_args(monitor)
    monitor.set_defaults(func=_cmd_monitor)

    plot = sub.add_parser("plot", help="draw the daemon's timeline to PNG: current and unused per guest, actions")
    plot.add_argument("timeline", type=Path, help="the daemon's timeline: JSON lines ([timeline] path)")
    plot.add_argument("-o", "--output", type=Path, default=None, help="PNG to write (default: TIMELINE.png)")
    plot.add_argument("--title", default=None, help="title above the plot (default: the file name)")
    plot.set_defaults(func=_cmd_plot)
