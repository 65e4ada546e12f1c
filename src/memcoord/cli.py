"""The `memcoord` command: a thin layer that parses arguments and hands over to the service or the config.

Exit codes follow sysexits.h, as admins' scripts expect: 64 usage, 66 cannot read input, 78 bad config.
Each command imports its work when it runs, so that `memcoord status` starts without the config models
(pydantic) or libvirt: about a tenth of a second, each time an admin looks.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from memcoord import __version__
from memcoord.admin import tryout, watch
from memcoord.admin.cliargs import DEFAULT_CONFIG_PATH, positive_float

if TYPE_CHECKING:
    from memcoord.core import config as config_mod


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, f"{self.prog}: error: {message}\n")


def _load_or_exit(path: Path) -> config_mod.Config:
    """The config file, or exit: 66 when it cannot be read, 78 when it is invalid (the only exit 78)."""
    from memcoord.core import config as config_mod

    try:
        return config_mod.load(path)
    except config_mod.ConfigFileError as exc:
        print(f"memcoord: {exc}", file=sys.stderr)
        sys.exit(os.EX_NOINPUT)
    except config_mod.ConfigError as exc:
        print(f"memcoord: invalid config:\n{exc}", file=sys.stderr)
        sys.exit(os.EX_CONFIG)


def _cmd_run(args: argparse.Namespace) -> int:
    from memcoord.daemon import journal
    from memcoord.daemon.connect import connect
    from memcoord.daemon.observe import Observer
    from memcoord.daemon.service import Overrides, Service
    from memcoord.daemon.undo import RecordingHypervisor, UndoRecord

    journal.setup(verbose=args.verbose)
    config = _load_or_exit(args.config)
    overrides = Overrides(interval_s=args.interval, dry_run=args.dry_run)
    # Each guest's size is recorded before memcoord first changes it, for `memcoord restore` (undo.py).
    record = UndoRecord()
    service = Service(
        args.config,
        config,
        lambda uri: RecordingHypervisor(connect(uri), record, uri),
        overrides,
        exit_when_idle=args.exit_when_idle,
        observer=Observer(),
    )
    service.install_signal_handlers()
    return service.run()


# check-config asks libvirt for its domains' names at most this long: ExecReload runs it before every reload.
CHECK_DOMAINS_TIMEOUT_S = 5.0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.path)
    print(f"{args.path}: OK")
    exposed = config.metrics.plain_http_exposed()
    if exposed:
        print(f"{args.path}: warning: {exposed}", file=sys.stderr)
    if config.domains and not args.offline:
        _check_domain_names(args.path, config)
    return os.EX_OK


def _check_domain_names(path: Path, config: config_mod.Config) -> None:
    """Warn (stderr) about `[domains."NAME"]` tables naming no domain libvirt knows; a valid file stays valid
    (exit 0) whatever libvirt says, or when it cannot be asked."""
    from memcoord.core.port import HypervisorError
    from memcoord.daemon.connect import known_domain_names
    from memcoord.hypervisor.domain_settings import unmatched_overrides

    uri = config.libvirt.uri
    try:
        names = known_domain_names(uri, CHECK_DOMAINS_TIMEOUT_S)
    except HypervisorError as exc:
        print(f'{path}: [domains."NAME"] names not checked against libvirt ({exc})', file=sys.stderr)
        return
    for warning in unmatched_overrides(config, names):
        print(f"{path}: warning: {warning}", file=sys.stderr)


def _cmd_print_config(args: argparse.Namespace) -> int:
    if args.running:
        return _print_running_config(args)
    from memcoord.core import config as config_mod

    path = args.config
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    config = _load_or_exit(path) if path is not None else config_mod.Config()
    sys.stdout.write(config_mod.dump(config))
    return os.EX_OK


def _print_running_config(args: argparse.Namespace) -> int:
    """The config the running daemon uses, from its published state: shows whether a reload took effect."""
    from memcoord.admin import status
    from memcoord.core import config as config_mod
    from memcoord.daemon import state

    state_path = args.state if args.state is not None else status.default_state_path(args.config)
    try:
        reading = state.read(state_path)
    except state.StateUnavailable as exc:
        print(f"memcoord: {exc}", file=sys.stderr)
        return os.EX_UNAVAILABLE
    sys.stdout.write(config_mod.dump(config_mod.Config.model_validate(reading.view["config"]["effective"])))
    return os.EX_OK


def _cmd_simulate(args: argparse.Namespace) -> int:
    from memcoord.admin import simulate
    from memcoord.core import config as config_mod

    config = _load_or_exit(args.config) if args.config is not None else config_mod.Config()
    return simulate.main(args.scenario, config, args.duration, args.plot)


def _cmd_make_room(args: argparse.Namespace) -> int:
    from memcoord.admin import makeroom
    from memcoord.admin.cliargs import config_or_defaults

    if args.domain_xml is not None and args.domain is None:
        print("memcoord make-room: --domain-xml goes with --for DOMAIN", file=sys.stderr)
        return os.EX_USAGE
    config, _label = config_or_defaults(_load_or_exit, args.config)
    return makeroom.main(config, args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="memcoord", description="Memory coordinator for KVM hosts (virtio balloon, libvirt).")
    parser.add_argument("--version", action="version", version=f"memcoord {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the coordinator in the foreground (what the systemd unit starts)")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="config file (%(default)s)")
    run.add_argument("--interval", type=positive_float, metavar="S", help="seconds between ticks")
    run.add_argument("--dry-run", action="store_true", help="decide and log, never call setMemory")
    run.add_argument("--exit-when-idle", action="store_true", help="exit when no managed domain is running")
    run.add_argument("-v", "--verbose", action="store_true", help="also log host-guard notes (debug)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check-config", help="validate a config file: OK, or every error; exit 78")
    check.add_argument("path", type=Path, nargs="?", default=DEFAULT_CONFIG_PATH, help="config file (%(default)s)")
    check.add_argument(
        "--offline", action="store_true", help='do not ask libvirt whether each [domains."NAME"] names a domain'
    )
    check.set_defaults(func=_cmd_check_config)

    show = sub.add_parser("print-config", help="print the effective config (defaults filled in) as TOML")
    show.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default: /etc/memcoord.toml if present, else the built-in defaults)",
    )
    show.add_argument("--running", action="store_true", help="the running daemon's config, from its state file")
    show.add_argument("--state", type=Path, metavar="PATH", help="with --running: state file (default: [status] path)")
    show.set_defaults(func=_cmd_print_config)

    # memcoord's own policy only: the peers it is compared with are bench material (bench/compare.py --policies).
    sim = sub.add_parser("simulate", help="run a scenario on the simulated hypervisor and print what happened")
    sim.add_argument("scenario", type=Path, help="scenario file (TOML), e.g. scenarios/course-1-one-hog.toml")
    sim.add_argument("--config", type=Path, default=None, help="config file (default: the built-in defaults)")
    sim.add_argument("--duration", type=positive_float, metavar="S", help="simulated seconds (default: scenario's)")
    sim.add_argument("--plot", type=Path, metavar="PNG", help="draw the timeline (needs matplotlib)")
    sim.set_defaults(func=_cmd_simulate)

    from memcoord.admin import makeroom

    room = sub.add_parser(
        "make-room",
        help="ask the running daemon for N MiB (or a domain's memory) above the host guard; exit 75 if short",
        description=makeroom.DESCRIPTION,
        epilog=makeroom.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    makeroom.add_arguments(room)
    room.set_defaults(func=_cmd_make_room)

    watch.add_commands(sub)  # status, monitor, plot (watch.py)
    tryout.add_commands(sub, _load_or_exit)  # plan, restore (tryout.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return os.EX_OK


if __name__ == "__main__":
    sys.exit(main())
