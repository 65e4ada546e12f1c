"""Proxmox VE's auto-ballooning (pvestatd `auto_balloning` + PVE::AutoBalloon::compute_alg1), as a peer.

What Proxmox does, read from pve-manager (PVE/Service/pvestatd.pm, PVE/AutoBalloon.pm):
- every 10 s (pvestatd's update cycle) the goal is host_total * target% - host_used, target 80% by default
  (node option ballooning-target); nothing happens when |goal| <= 10 MiB;
- each VM moves at most maxchange = 100 MiB per cycle;
- a VM is "pressured" unless its free memory > 25% of its balloon floor (balloon_min) and it sits at or above
  that floor; growth goes to pressured VMs first, and only when they make no progress to all VMs;
  shrinking goes to the VMs with enough free memory first, then to all;
- within a list, the memory above the floors is split by shares (default 1000): desired = balloon_min +
  alloc * shares / total_shares, VMs hitting maxmem or balloon_min dropping out of the next round.
Proxmox knows nothing of a guest's growth rate: it steers the host, not the guests.
We use memcoord's per-guest floor (guest.min_mib) as balloon_min and the libvirt maximum (or max_mib) as maxmem.
"""

from __future__ import annotations

from dataclasses import dataclass

from memcoord.core.config import Config
from memcoord.core.model import KIB_PER_MIB, Action, Change, Snapshot, mib_to_kib

TARGET_PERCENT = 80
MAX_CHANGE_KIB = mib_to_kib(100)
DEADBAND_KIB = mib_to_kib(10)
CYCLE_S = 10.0
DEFAULT_SHARES = 1000


@dataclass(frozen=True, slots=True)
class _Vm:
    balloon_kib: int
    balloon_min_kib: int
    maxmem_kib: int
    freemem_kib: int | None
    shares: int = DEFAULT_SHARES


def _change(vms: dict[str, _Vm], res: dict[str, int], ids: list[str], want_kib: int, maxchange_kib: int) -> int:
    """One pass of compute_alg1's change_func: move up to want_kib across ids by shares; returns what is left."""
    rest_kib = want_kib
    done: set[str] = set()
    repeat = progress = True
    rounds = 0
    # The Perl loop has no bound; rounds only guards against a pathological share split in this port.
    while rest_kib and repeat and progress and rounds < 1000:
        rounds += 1
        repeat = progress = False
        shares_total = 0
        alloc_old_kib = 0
        for vmid in ids:
            if vmid in done:
                continue
            d = vms[vmid]
            alloc_old_kib += res.get(vmid, d.balloon_kib) - d.balloon_min_kib
            shares_total += d.shares
        if not shares_total:
            break
        alloc_new_kib = alloc_old_kib + rest_kib
        changes_kib = 0
        for vmid in ids:
            if vmid in done:
                continue
            d = vms[vmid]
            desired_kib = d.balloon_min_kib + int(alloc_new_kib / shares_total * d.shares)
            if desired_kib > d.maxmem_kib:
                desired_kib, repeat = d.maxmem_kib, True
            elif desired_kib < d.balloon_min_kib:
                desired_kib, repeat = d.balloon_min_kib, True
            if want_kib > 0 and desired_kib > d.balloon_kib:
                balloon_kib = min(d.balloon_kib + maxchange_kib, desired_kib)
            elif desired_kib < d.balloon_kib:
                balloon_kib = max(d.balloon_kib - maxchange_kib, desired_kib)
            else:
                done.add(vmid)
                continue
            if balloon_kib != d.balloon_kib:
                old_kib = res.get(vmid, d.balloon_kib)
                res[vmid] = balloon_kib
                if balloon_kib != old_kib:
                    changes_kib += balloon_kib - old_kib
                    progress = True
                    repeat = True
        rest_kib -= changes_kib
    return rest_kib


def compute_alg1(vms: dict[str, _Vm], goal_kib: int, maxchange_kib: int) -> dict[str, int]:
    """New balloon sizes by VM id, as PVE::AutoBalloon::compute_alg1 computes them (KiB instead of bytes)."""
    ids = sorted(vms)
    pressured = []
    comfortable = []
    for vmid in ids:
        d = vms[vmid]
        if d.freemem_kib and d.freemem_kib > d.balloon_min_kib * 0.25 and d.balloon_kib >= d.balloon_min_kib:
            comfortable.append(vmid)
        else:
            pressured.append(vmid)
    res: dict[str, int] = {}
    if goal_kib > DEADBAND_KIB:
        rest_kib = _change(vms, res, pressured, goal_kib, maxchange_kib)
        if rest_kib >= goal_kib:
            _change(vms, res, ids, rest_kib, maxchange_kib)
    elif goal_kib < -DEADBAND_KIB:
        rest_kib = _change(vms, res, comfortable, goal_kib, maxchange_kib)
        if rest_kib <= goal_kib:
            _change(vms, res, ids, rest_kib, maxchange_kib)
    return res


class ProxmoxPolicy:
    name = "proxmox"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.last_cycle_s: float | None = None

    def decide(self, snapshot: Snapshot) -> tuple[Change, ...]:
        now_s = snapshot.taken_at_s
        if self.last_cycle_s is not None and now_s - self.last_cycle_s < CYCLE_S - 1e-6:
            return ()
        self.last_cycle_s = now_s
        vms = {}
        for dom in snapshot.domains:
            if not self.config.manages(dom.name):
                continue
            floor_kib = self.config.floor_kib(dom.name, dom.max_kib)
            maxmem_kib = self.config.ceiling_kib(dom.name, dom.max_kib)
            vms[dom.name] = _Vm(dom.current_kib, min(floor_kib, maxmem_kib), maxmem_kib, dom.unused_kib)
        host = snapshot.host
        used_kib = host.total_kib - host.available_kib
        goal_kib = int(host.total_kib * TARGET_PERCENT / 100 - used_kib)
        res = compute_alg1(vms, goal_kib, MAX_CHANGE_KIB)
        changes = []
        for vmid in sorted(res):
            before_kib, after_kib = vms[vmid].balloon_kib, res[vmid]
            if after_kib != before_kib:
                action = Action.GROW if after_kib > before_kib else Action.RECLAIM
                reason = f"host goal {goal_kib // KIB_PER_MIB:+d} MiB toward {TARGET_PERCENT}% used"
                changes.append(Change(vmid, action, before_kib, after_kib, reason))
        return tuple(changes)
