"""The try-and-undo subcommands (`plan`, `restore`), registered on the CLI by one call from cli.py.

Their help texts are their documentation (the man page is generated from them). The work is done in plan.py
and restore.py, imported only when the command runs.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memcoord.admin.cliargs import DEFAULT_CONFIG_PATH

if TYPE_CHECKING:
    from memcoord.core.config import Config

PLAN_DESCRIPTION = """\
Sample the running domains once and show, for every one: whether memcoord manages it, its class, its size,
what memcoord would do this tick and why, and where it would settle if nothing changed: the policy is run
forward on the simulated hypervisor seeded from the sample (each guest's size, maximum, used memory and page
cache held as sampled, the host's available memory as sampled) until nothing changes for 60 s, at most
10 simulated minutes. One sample shows no trend: classes are those of guests whose use holds steady.

It changes nothing: no setMemory, and no balloon stats period is set. A guest whose stats do not flow yet
because no period is set says "no stats: the stats period is set when memcoord runs"."""

PLAN_EPILOG = """\
--json prints one object (sizes KiB, times seconds; null where a key does not apply):
  uri, config_path, taken_at_s (epoch of the sample), horizon_s (the most simulated), simulated_s,
  settled (true when nothing changed for 60 s before the horizon),
  host {available_kib, total_kib, guard_kib, headroom_kib (what the guard lets memcoord hand out now)},
  domains [{name, managed, class (starving|wasteful|idle|busy|no-stats|stale|no-balloon; null when not
            managed), current_kib, max_kib, floor_kib, ceiling_kib, action (grow|reclaim|tax|clamp|relieve;
            null: none this tick), to_kib, why, settled_kib, settles_in_s (simulated seconds until its
            balloon rests there; 0: stays as it is; null: still moving at the horizon)}]

exit status: 0 the plan was printed; 64 bad arguments; 66 the config file cannot be read; 78 the config is
invalid; 69 libvirt cannot be reached (one line naming the URI)."""

RESTORE_DESCRIPTION = """\
Set running guests back to their libvirt maximum (or to --to MIB), to uninstall memcoord or to hand guests
back to manual control. With no DOMAIN: every domain this config manages. Growth goes through the host guard:
guests grow only by what the host has above host.min_available_mib (less what memcoord keeps for guests using
theirs), served in the order the domains are named (by name when none is named); a guest that cannot be fully
restored gets what there is and is reported with how much is missing. --to is clamped to each guest's maximum,
saying so; restore never lowers a guest (a --to below a guest's current size leaves it as it is). Each
setMemory is logged like memcoord's own actions (MEMCOORD_ACTION=restore), to the journal when there is one,
else to stderr.

A running memcoord would move the guests again: restore refuses while memcoord's service runs (its state file
or systemd says so) and manages any of them. Stop memcoord first, or exclude the guests
([domains."NAME"] enabled = false, then systemctl reload memcoord); --force restores anyway."""

RESTORE_EPILOG = """\
exit status: 0 every guest restored (or already there); 64 bad arguments (e.g. --to 0); 66 a named domain is
not running or has no balloon (named in the message), nothing changed; 69 libvirt cannot be reached; 75 a
guest could not be fully restored (host guard) or its setMemory failed: run again once the host has memory;
77 memcoord is running and manages a named guest (without --force), nothing changed; 78 invalid config."""


LoadConfig = Callable[[Path], "Config"]


def _config_or_defaults(load: LoadConfig, path: Path | None) -> tuple[Config, str]:
    """The config: --config, else /etc/memcoord.toml if present, else the built-in defaults (and its label)."""
    from memcoord.core import config as config_mod

    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is None:
        return config_mod.Config(), "built-in defaults"
    return load(path), str(path)


def _cmd_plan(load: LoadConfig, args: argparse.Namespace) -> int:
    from memcoord.admin import plan

    config, label = _config_or_defaults(load, args.config)
    return plan.main(config, label, args.json)


def _cmd_restore(load: LoadConfig, args: argparse.Namespace) -> int:
    from memcoord.admin import restore

    config, _label = _config_or_defaults(load, args.config)
    return restore.main(config, args.domains, args.to, args.dry_run, args.force)


def _positive_mib(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of MiB: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0 MiB: {text!r}")
    return value


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="config file (default: /etc/memcoord.toml if present, else the built-in defaults)",
    )


def add_commands(sub: Any, load: LoadConfig) -> None:
    """Register plan and restore on the `memcoord` subparsers; load(path) reads a config file or exits with the
    CLI's message and code (cli.py hands in its own, so that this module does not import cli.py)."""
    raw = argparse.RawDescriptionHelpFormatter
    plan = sub.add_parser(
        "plan",
        help="show what memcoord would do to each guest now and where each would settle; changes nothing",
        description=PLAN_DESCRIPTION,
        epilog=PLAN_EPILOG,
        formatter_class=raw,
    )
    _config_arg(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (keys below), for scripts")
    plan.set_defaults(func=functools.partial(_cmd_plan, load))

    restore = sub.add_parser(
        "restore",
        help="set guests back to their libvirt maximum (or --to MIB) through the host guard; exit 75 if short",
        description=RESTORE_DESCRIPTION,
        epilog=RESTORE_EPILOG,
        formatter_class=raw,
    )
    restore.add_argument(
        "domains",
        nargs="*",
        metavar="DOMAIN",
        help="running domains to restore, served in this order (default: every managed domain, by name)",
    )
    restore.add_argument(
        "--to", type=_positive_mib, metavar="MIB", help="restore to this size in MiB instead of the maximum"
    )
    _config_arg(restore)
    restore.add_argument("--dry-run", action="store_true", help="print and log what it would do, call no setMemory")
    restore.add_argument(
        "--force", action="store_true", help="restore even guests a running memcoord manages (it may move them again)"
    )
    restore.set_defaults(func=functools.partial(_cmd_restore, load))
