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

if TYPE_CHECKING:
    from memcoord.core.config import Config

from memcoord.admin.cliargs import config_arg, config_or_defaults, positive_mib

PLAN_DESCRIPTION = """\
Show, for every running domain: whether memcoord manages it (and if not, why: the config, its metadata, or a
definition ballooning cannot help, such as no balloon device, an assigned VFIO device, hugepages or locked
memory), its class, its size, what memcoord would do this tick and why, and where it would settle if nothing
changed: the policy is run forward on the simulated hypervisor seeded from the sample (each guest's size,
maximum, used memory and page cache held as sampled, the host's available memory as sampled) until nothing
changes for 60 s, at most 10 simulated minutes.

It decides only on stats the daemon would trust: fresh (no older than 3 stats periods and 2 ticks) and
possible (a report of more free or total memory than the guest has, such as the one a balloon driver sends at
boot, is no sample). libvirt sets no balloon stats period by default, so a guest memcoord never ran on reports
nothing new: for the managed guests whose period is off, or whose stats are not usable, plan sets the period
(loop.stats_period_s, live only: a polling interval, harmless, what memcoord run sets too; it says so), then
waits for two fresh samples of each (a few seconds; at most 10) so that the policy sees each guest's trend. A
guest that still has no usable stats is left alone, as the daemon would leave it, and its row says why.
--no-stats-period sets no period: such guests are then left alone. plan changes nothing else: no setMemory."""

PLAN_EPILOG = """\
--json prints one object (sizes KiB, times seconds; null where a key does not apply):
  uri, config_path, taken_at_s (epoch of the sample), stats_period_s, stats_period_set (the guests plan set
  the balloon stats period on), profile (host.profile: density|production), horizon_s (the most
  simulated), simulated_s, settled (true when nothing changed for 60 s before the horizon),
  host {available_kib, total_kib, guard_kib, headroom_kib (what the guard lets memcoord hand out now),
        target_available_kib (idle guests give memory back only below it; 0: always)},
  domains [{name, managed, class (starving|wasteful|idle|busy|no-stats|stale|no-balloon; null when not
            managed), current_kib, max_kib, floor_kib, ceiling_kib, usable_kib, unused_kib, stats_age_s (the
            sample decided on: its figures and age; null when none was usable), action
            (grow|reclaim|tax|clamp|relieve; null: none this tick), to_kib, why, settled_kib, settles_in_s
            (simulated seconds until its balloon rests there; 0: stays as it is; null: still moving at the
            horizon)}]

exit status: 0 the plan was printed; 64 bad arguments; 66 the config file cannot be read; 78 the config is
invalid; 69 libvirt cannot be reached (one line naming the URI)."""

RESTORE_DESCRIPTION = """\
Set running guests back to the size they had before memcoord first changed them, to uninstall memcoord or to
hand guests back to manual control; --to-max sets them to their libvirt maximum instead, --to MIB to a size.
With no DOMAIN: every domain this config manages. The daemon records each guest's size (balloon current)
before its first change, in /var/lib/memcoord/restore-sizes.json ($STATE_DIRECTORY under systemd), kept across
restarts and upgrades; a guest with no size there was never changed by memcoord and is left as it is. A guest
fully restored leaves the record (memcoord's next change to it records afresh).

Restore never lowers a guest: one above the size wanted (memcoord grew it because its programs needed the
memory; a --to below its size) is left as it is, saying so. Growth goes through the host guard: guests grow
only by what the host has above host.min_available_mib (less what memcoord keeps for guests using theirs),
served in the order the domains are named (by name when none is named); a guest that cannot be fully restored
gets what there is and is reported with how much is missing. Targets are clamped to each guest's maximum,
saying so. Each setMemory is logged like memcoord's own actions (MEMCOORD_ACTION=restore), to the journal
when there is one, else to stderr.

A running memcoord would move the guests again: restore refuses while memcoord's service runs (its state file
or systemd says so) and manages any of them. Stop memcoord first, or exclude the guests
([domains."NAME"] enabled = false, then systemctl reload memcoord); --force restores anyway."""

RESTORE_EPILOG = """\
exit status: 0 every guest restored (or already there, or left as it is, saying why); 64 bad arguments (e.g.
--to 0, or --to with --to-max); 65 the record of sizes before memcoord cannot be read (named in the message),
nothing changed; 66 a named domain is not running or has no balloon (named in the message), nothing changed;
69 libvirt cannot be reached; 75 a guest could not be fully restored (host guard) or its setMemory failed:
run again once the host has memory; 77 memcoord is running and manages a named guest (without --force),
nothing changed; 78 invalid config."""


LoadConfig = Callable[[Path], "Config"]


def _cmd_plan(load: LoadConfig, args: argparse.Namespace) -> int:
    from memcoord.admin import plan

    config, label = config_or_defaults(load, args.config)
    return plan.main(config, label, args.json, set_period=not args.no_stats_period)


def _cmd_restore(load: LoadConfig, args: argparse.Namespace) -> int:
    from memcoord.admin import restore

    config, _label = config_or_defaults(load, args.config)
    return restore.main(config, args.domains, args.to, args.dry_run, args.force, to_max=args.to_max)


def add_commands(sub: Any, load: LoadConfig) -> None:
    """Register plan and restore on the `memcoord` subparsers; load(path) reads a config file or exits with the
    CLI's message and code (cli.py hands in its own, so that this module does not import cli.py)."""
    raw = argparse.RawDescriptionHelpFormatter
    plan = sub.add_parser(
        "plan",
        help="show what memcoord would do to each guest now and where each would settle; sets only stats periods",
        description=PLAN_DESCRIPTION,
        epilog=PLAN_EPILOG,
        formatter_class=raw,
    )
    config_arg(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (keys below), for scripts")
    plan.add_argument(
        "--no-stats-period",
        action="store_true",
        help="set no balloon stats period: guests without one are left alone in the plan",
    )
    plan.set_defaults(func=functools.partial(_cmd_plan, load))

    restore = sub.add_parser(
        "restore",
        help="set guests back to their size before memcoord (or --to-max, --to MIB) through the host guard",
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
    target = restore.add_mutually_exclusive_group()
    target.add_argument(
        "--to-max", action="store_true", help="restore to the libvirt maximum instead of the size before memcoord"
    )
    target.add_argument(
        "--to",
        type=positive_mib,
        metavar="MIB",
        help="restore to this size in MiB instead of the size before memcoord",
    )
    config_arg(restore)
    restore.add_argument("--dry-run", action="store_true", help="print and log what it would do, call no setMemory")
    restore.add_argument(
        "--force", action="store_true", help="restore even guests a running memcoord manages (it may move them again)"
    )
    restore.set_defaults(func=functools.partial(_cmd_restore, load))
