"""Logging to the journal (with structured fields) under systemd, to stderr otherwise.

Every action the coordinator takes is one record with MEMCOORD_* fields and a MESSAGE_ID per action kind,
so `journalctl -u memcoord MEMCOORD_DOMAIN=web1` answers "what happened to web1".
"""

from __future__ import annotations

import logging
import os
import sys

from memcoord.core.model import ApplyResult, Outcome, kib_to_mib

log = logging.getLogger("memcoord")

# Each action kind's MESSAGE_ID is defined with the kind (model.Action.message_id).
MESSAGE_ID_SET_MEMORY_FAILED = "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c05"
MESSAGE_ID_SET_MEMORY_UNKNOWN = "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c08"
# The daemon's own life, so that `journalctl MESSAGE_ID=...` finds every start, loss or failed reload.
LIFECYCLE_IDS = {
    "started": "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c10",
    "ready": "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c11",
    "stopping": "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c12",
    "hypervisor-lost": "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c13",
    "hypervisor-back": "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c14",
    "reload-ok": "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c15",
    "reload-failed": "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c16",
    "deadline-spent": "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c17",
    "deadline-ok": "6f1d2a0c7b1e4a4f9d3c0e5b8a7f6c18",
}


def lifecycle(event: str) -> dict[str, str]:
    """The journal fields of a lifecycle record: `log.info(..., extra=lifecycle("started"))`."""
    return {"MESSAGE_ID": LIFECYCLE_IDS[event], "MEMCOORD_EVENT": event}


def _stderr_is_journal() -> bool:
    """systemd sets JOURNAL_STREAM to stderr's device:inode when stderr goes to the journal."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup(verbose: bool = False) -> None:
    handler: logging.Handler
    if _stderr_is_journal():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER="memcoord")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def action(result: ApplyResult, dry_run: bool) -> None:
    """One record per setMemory: which guest, what, from -> to, why, and its outcome (MEMCOORD_OUTCOME: set,
    failed, unknown); a warning when it failed or its outcome is unknown."""
    c = result.change
    fields = {
        "MEMCOORD_DOMAIN": c.domain,
        "MEMCOORD_ACTION": str(c.action),
        "MEMCOORD_FROM_KIB": c.from_kib,
        "MEMCOORD_TO_KIB": c.to_kib,
        "MEMCOORD_REASON": c.reason,
        "MEMCOORD_DRY_RUN": int(dry_run),
        "MEMCOORD_OUTCOME": str(result.outcome),
        "MESSAGE_ID": c.action.message_id,
    }
    what = f"{c.action} {c.domain} {kib_to_mib(c.from_kib):.0f} -> {kib_to_mib(c.to_kib):.0f} MiB ({c.reason})"
    if result.outcome is Outcome.UNKNOWN:
        fields["MEMCOORD_ERROR"] = str(result.error)
        fields["MESSAGE_ID"] = MESSAGE_ID_SET_MEMORY_UNKNOWN
        log.warning(
            "setMemory outcome unknown (it may still land; counted as set until the balloon's size tells): %s: %s",
            what,
            result.error,
            extra=fields,
        )
    elif result.error is not None:
        fields["MEMCOORD_ERROR"] = result.error
        fields["MESSAGE_ID"] = MESSAGE_ID_SET_MEMORY_FAILED
        log.warning("setMemory failed: %s: %s", what, result.error, extra=fields)
    else:
        log.info("%s%s", "dry run, not applied: " if dry_run else "", what, extra=fields)
