"""Which guest stats samples cannot be true: what a guest reports is untrusted input, and an impossible sample is
no sample.

Pure, on one `DomainStats`. `memcoord plan` leaves a guest whose latest sample fails here alone (it shows why);
the policy is meant to share it (see ARCHITECTURE.md).

The case that made this necessary: a guest defined with `<currentMemory>` below its maximum boots with its balloon
at the maximum; its balloon driver sends one stats report (MemTotal and MemAvailable of the full size) before it
inflates the balloon to currentMemory. Without a stats period no report follows, and that one stays in libvirt's
stats for hours: a 1024 MiB guest "with 1860 MiB usable".
"""

from __future__ import annotations

from memcoord.core.model import KIB_PER_MIB, DomainStats, kib_to_mib

# balloon.current moves by a page or two between QEMU's view and the guest's; anything beyond this is not that.
TOLERANCE_KIB = 4 * KIB_PER_MIB


def _mib(kib: int) -> str:
    return f"{kib_to_mib(kib):.0f} MiB"


def impossible(dom: DomainStats) -> str | None:
    """Why this sample cannot describe the guest as it is, or None when it can. A figure is impossible when it
    exceeds what holds it: the guest's free (MemFree) or usable (MemAvailable) memory above its own total
    (MemTotal, the same report), or any of them above the balloon's size (for a guest whose balloon deflates
    on OOM, its total less what the balloon holds: `DomainStats.own_total_kib`)."""
    total_kib = dom.own_total_kib
    if total_kib is not None and total_kib > dom.current_kib + TOLERANCE_KIB:
        return f"its total (MemTotal) {_mib(total_kib)} is more than its balloon's {_mib(dom.current_kib)}"
    for figure, kib in (("usable (MemAvailable)", dom.usable_kib), ("unused (MemFree)", dom.unused_kib)):
        if kib is None:
            continue
        if total_kib is not None and kib > total_kib + TOLERANCE_KIB:
            return f"{figure} {_mib(kib)} is more than its total (MemTotal) {_mib(total_kib)}"
        if kib > dom.current_kib + TOLERANCE_KIB:
            return f"{figure} {_mib(kib)} is more than its balloon's {_mib(dom.current_kib)}"
    return None
