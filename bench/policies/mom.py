"""oVirt MOM's default balloon policy (doc/balloon.rules with doc/mom-balloon.conf), as a comparison peer.

What MOM does, read from github.com/oVirt/mom:
- monitors sample host and guests every 5 s (host-/guest-monitor-interval) and keep the last 10 samples
  (sample-history-length); the policy reads moving averages (StatAvg) of them;
- the policy engine runs every 10 s (policy-engine-interval);
- host_free_percent = avg(host mem_free) / MemTotal, where mem_free = MemFree + Buffers + Cached (here: the
  host's available memory);
- below pressure_threshold 0.20 every guest shrinks by max_balloon_change_percent 5% of its current size, but
  not below min(balloon_min, used + guest_free_percent * current), where guest_free_percent scales
  min_guest_free_percent 0.20 by host pressure and turns negative (-0.05 + host free) at pressure_critical 0.05;
- otherwise every guest below its maximum grows by 5% of its current size, up to its maximum;
- changes smaller than min_balloon_change_percent 0.25% of current are skipped.
MOM's libvirt interface takes balloon_min from <memtune><min_guarantee> (0 when absent); we use memcoord's
per-guest floor (guest.min_mib) there, since a 0 floor would let MOM shrink a guest toward nothing. Note the
rules' `min`: a guest using little may still be shrunk below balloon_min, as in MOM itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from memcoord.core.config import Config
from memcoord.core.model import Action, Change, Snapshot

PRESSURE_THRESHOLD = 0.20
PRESSURE_CRITICAL = 0.05
MIN_GUEST_FREE_PERCENT = 0.20
MAX_BALLOON_CHANGE_PERCENT = 0.05
MIN_BALLOON_CHANGE_PERCENT = 0.0025
SAMPLE_INTERVAL_S = 5.0
POLICY_INTERVAL_S = 10.0
HISTORY_LENGTH = 10


def _avg(values: deque[int]) -> float:
    return sum(values) / len(values)


@dataclass
class _GuestHistory:
    balloon_cur_kib: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))
    mem_unused_kib: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))


class MomPolicy:
    name = "mom"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.host_free_kib: deque[int] = deque(maxlen=HISTORY_LENGTH)
        self.guests: dict[str, _GuestHistory] = {}
        self.last_sample_s: float | None = None
        self.last_policy_s: float | None = None

    def _collect(self, snapshot: Snapshot) -> None:
        self.host_free_kib.append(snapshot.host.available_kib)
        seen = set()
        for dom in snapshot.domains:
            if dom.unused_kib is None or not self.config.manages(dom.name):
                continue
            hist = self.guests.setdefault(dom.name, _GuestHistory())
            hist.balloon_cur_kib.append(dom.current_kib)
            hist.mem_unused_kib.append(dom.unused_kib)
            seen.add(dom.name)
        for gone in set(self.guests) - seen:
            del self.guests[gone]

    def decide(self, snapshot: Snapshot) -> tuple[Change, ...]:
        now_s = snapshot.taken_at_s
        if self.last_sample_s is None or now_s - self.last_sample_s >= SAMPLE_INTERVAL_S - 1e-6:
            self.last_sample_s = now_s
            self._collect(snapshot)
        if self.last_policy_s is not None and now_s - self.last_policy_s < POLICY_INTERVAL_S - 1e-6:
            return ()
        self.last_policy_s = now_s
        if not self.host_free_kib or snapshot.host.total_kib <= 0:
            return ()

        host_free_percent = _avg(self.host_free_kib) / snapshot.host.total_kib
        pressure = host_free_percent < PRESSURE_THRESHOLD
        if host_free_percent <= PRESSURE_CRITICAL:
            guest_free_percent = -0.05 + host_free_percent
        else:
            guest_free_percent = MIN_GUEST_FREE_PERCENT * min(1.0, host_free_percent / PRESSURE_THRESHOLD)

        changes = []
        for dom in sorted(snapshot.domains, key=lambda d: d.name):
            hist = self.guests.get(dom.name)
            if hist is None or not hist.balloon_cur_kib:
                continue
            cur_kib = dom.current_kib
            max_kib = self.config.ceiling_kib(dom.name, dom.max_kib)
            used_kib = _avg(hist.balloon_cur_kib) - _avg(hist.mem_unused_kib)
            balloon_min_kib = min(self.config.floor_kib(dom.name, dom.max_kib), used_kib + guest_free_percent * cur_kib)
            if pressure:
                size_kib = max(cur_kib * (1 - MAX_BALLOON_CHANGE_PERCENT), balloon_min_kib)
                if size_kib > cur_kib:
                    continue
                action, reason = Action.RECLAIM, f"host free {host_free_percent:.0%} < {PRESSURE_THRESHOLD:.0%}"
            else:
                if cur_kib >= max_kib:
                    continue
                size_kib = max(min(cur_kib * (1 + MAX_BALLOON_CHANGE_PERCENT), max_kib), balloon_min_kib)
                action, reason = Action.GROW, f"host free {host_free_percent:.0%} >= {PRESSURE_THRESHOLD:.0%}"
            if abs(size_kib - cur_kib) > MIN_BALLOON_CHANGE_PERCENT * cur_kib:
                changes.append(Change(dom.name, action, cur_kib, int(size_kib), reason))
        return tuple(changes)
