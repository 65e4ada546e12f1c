"""Chaos soak: the real Service on the simulator, a fast-forwarded clock and random faults, invariants every tick.

    .venv/bin/python bench/chaos_soak.py [--ticks 1000000] [--seed 14]

Faults, drawn each tick from a seeded RNG: the bulk stats call fails (the hypervisor is unreachable); a
setMemory fails; domains appear, vanish between sample and apply, or vanish for good; a guest's stats go
stale (its stats period is lost) or missing (no balloon driver); the rest of the host takes and frees memory
(host pressure); a reload with a good file (new thresholds, floors, ceilings, guard) or a bad one.

Invariants checked on every tick, on the changes the simulated host really accepted and on the host itself:
  - no lowering below the guest's floor, no target above its ceiling (max or max_mib override);
  - growth never takes the host below its guard: a tick grows guests by no more than the host's available
    memory (as the simulated host has it) above `min_available_mib`, less what memcoord granted in the last
    GRANT_TICKS ticks that the guests have not touched yet (but for a guest whose stats are older than the bound on
    silence: the policy releases what the guard holds for it, by design), so even when the grown guests touch all
    of it the host stays at its guard;
  - the loop never stops: tick() never raises, and a reachable tick returns True.
Reported, not a violation: ticks after which the host would be below its guard if every managed guest filled its
whole target (the policy does not reserve idle guests' untouched memory, by design), counted apart when a managed
guest's stats were frozen (its stats period lost while it runs).
Memory: the process RSS at 10 %, 50 % and 100 % of the ticks (bounded caches, such as the policy's thresholds
cache of 4,096 guest sizes, fill in the first half; a leak would keep growing in the second).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from memcoord.core import config as config_mod
from memcoord.core.model import KIB_PER_MIB, Action, ApplyResult, Change, Rule, Snapshot, mib_to_kib
from memcoord.core.policy import silence_limit_s
from memcoord.core.port import HypervisorError
from memcoord.daemon.service import Service
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import Burst, Hog, Idle, Sawtooth

INTERVAL_S = 1.0
HOST_TOTAL_KIB = mib_to_kib(16 * 1024)
P_UNREACHABLE = 0.01
P_SET_MEMORY_FAILS = 0.02
P_VANISH_MID_TICK = 0.01
P_GUEST_LEAVES = 0.004
P_GUEST_ARRIVES = 0.006
P_STATS_LOST = 0.004
P_STATS_BACK = 0.05
P_RELOAD = 0.002
P_BAD_RELOAD = 0.3
MAX_GUESTS = 12
# Memory memcoord granted counts against the next ticks' growth until the guest touched it, for this many ticks
# (the balloon arrives within a tick; the guest's next stats report within a stats period).
GRANT_TICKS = 3


def worst_case_available_kib(hv: SimulatedHypervisor, config: config_mod.Config) -> int:
    """Host memory left once the balloons reach their targets and every managed guest touched all of its target.

    A guest's balloon always reaches its target in the simulator, so QEMU ends up holding at most the target
    (memory reclaimed but not yet taken back counts as freed: the policy hands it out in the same tick).
    Unmanaged guests count with what they hold now: the policy's guard counts only the guests it manages, so an
    unmanaged guest growing into memory it was given before is outside what memcoord promises (seed 1 finds such
    a case within 30,000 ticks when they are counted at their targets; see RELIABILITY.md)."""
    held_kib = sum(g.target_kib if config.manages(g.name) else g.rss_kib for g in hv.guests.values())
    return hv.host_total_kib - hv.host_other_used_kib - held_kib


@dataclass
class Chaos(SimulatedHypervisor):
    """The simulator with faults. It records every change it accepted, for the invariant checks."""

    rng: random.Random = field(default_factory=random.Random)
    accepted: list[Change] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)

    def __init__(self, rng: random.Random, guests: list[SimGuest]) -> None:
        super().__init__(guests, host_total_kib=HOST_TOTAL_KIB, host_other_used_kib=mib_to_kib(4096))
        self.rng = rng
        self.accepted = []
        self.faults = {}
        self.unreachable = False

    def _fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def sample(self, deadline_s: float | None = None) -> Snapshot:
        self.unreachable = self.rng.random() < P_UNREACHABLE
        if self.unreachable:
            self._fault("unreachable")
            raise HypervisorError("chaos: hypervisor unreachable")
        return super().sample(deadline_s)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        if changes and self.rng.random() < P_VANISH_MID_TICK:
            gone = self.rng.choice(changes).domain
            if gone in self.guests:
                del self.guests[gone]
                self._fault("vanished mid-tick")
        results = []
        for change in changes:
            if self.rng.random() < P_SET_MEMORY_FAILS:
                self._fault("setMemory failed")
                results.append(ApplyResult(change, "chaos: setMemory failed"))
                continue
            [result] = super().apply([change])
            if result.ok:
                self.accepted.append(change)
            results.append(result)
        return results


def random_guest(rng: random.Random, name: str, start_s: float) -> SimGuest:
    max_mib = rng.choice([1024, 2048, 4096])
    workload = rng.choice(
        [
            Idle(mib_to_kib(rng.randint(0, 200))),
            Hog(mib_to_kib(rng.randint(5, 60)), start_s=start_s + rng.randint(0, 60), free_s=start_s + 300),
            Sawtooth(mib_to_kib(50), mib_to_kib(rng.randint(200, 900)), period_s=rng.randint(30, 200)),
            Burst(mib_to_kib(80), mib_to_kib(rng.randint(100, 700)), 120, 40, start_s=start_s, seed=rng.randint(0, 99)),
        ]
    )
    return SimGuest(
        name, max_kib=mib_to_kib(max_mib), target_kib=mib_to_kib(rng.randint(300, max_mib)), workload=workload
    )


def good_config(rng: random.Random) -> str:
    starving = rng.randint(50, 200)
    gap = rng.randint(50, 400)  # wasteful - starving; a reclaim step must stay below it (or guests flap)
    lines = [
        "[libvirt]",
        'domains = ["vm*"]',
        "[loop]",
        f"interval_s = {INTERVAL_S}",
        "[guest]",
        f"starving_mib = {starving}",
        f"wasteful_mib = {starving + gap}",
        f"grow_step_mib = {rng.randint(32, 512)}",
        f"reclaim_step_mib = {rng.randint(16, min(256, gap - 1))}",
        f"min_mib = {rng.randint(128, 512)}",
        f"idle_tax_mib = {rng.randint(0, 16)}",
        "[host]",
        f"min_available_mib = {rng.randint(512, 8192)}",
    ]
    for i in rng.sample(range(MAX_GUESTS), 3):
        lo = rng.randint(200, 800)
        lines += [f'[domains."vm{i}"]', f"min_mib = {lo}", f"max_mib = {lo + rng.randint(0, 2048)}"]
        if rng.random() < 0.2:
            lines.append("enabled = false")
    return "\n".join(lines) + "\n"


BAD_CONFIGS = (
    "[guest]\nstarving_mib = 400\nwasteful_mib = 100\n",
    "[guest]\ngrow_step_mib = -5\n",
    "[loop\ninterval_s = 1\n",
    "[nonsense]\nkey = 1\n",
    "\x00\xff",
)


def describe(hv: SimulatedHypervisor, service: Service, config: config_mod.Config) -> str:
    """What the policy saw and what every guest holds, for a violation's message."""
    snap, plan = service.observer.snapshot, service.observer.plan
    changed = [(c.domain, str(c.action), c.from_kib // KIB_PER_MIB, c.to_kib // KIB_PER_MIB) for c in hv.accepted]  # type: ignore[attr-defined]
    guests = ", ".join(
        f"{g.name}{'' if config.manages(g.name) else '(unmanaged)'} current {g.current_kib // KIB_PER_MIB}"
        f" target {g.target_kib // KIB_PER_MIB} rss {g.rss_kib // KIB_PER_MIB}"
        for g in hv.guests.values()
    )
    seen = f"policy saw available {snap.host.available_kib // KIB_PER_MIB} MiB" if snap else "no snapshot"
    headroom = f", headroom {plan.host_headroom_kib // KIB_PER_MIB} MiB" if plan else ""
    return f"{seen}{headroom}; changes {changed}; {guests}"


EXAMPLES = 20  # kept per kind of finding: a million ticks of messages would be the soak's own memory growth


@dataclass
class Findings:
    """How many times something was seen, and the first few messages."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(message)


@dataclass
class Result:
    ticks: int = 0
    ok_ticks: int = 0
    changes: int = 0
    violations: list[str] = field(default_factory=list)
    # Ticks whose growth would take the host below its guard if every managed guest filled its whole target
    # (stricter than the policy's promise: it does not reserve idle guests' untouched memory), apart from those
    # where a managed guest's stats were frozen.
    worst_case: Findings = field(default_factory=Findings)
    worst_case_frozen: Findings = field(default_factory=Findings)
    # Grown again on the very stats sample of its previous growth (stats frozen, or not refreshed yet).
    regrown_same_sample: Findings = field(default_factory=Findings)
    reloads_ok: int = 0
    reloads_bad: int = 0
    rss_mib: list[float] = field(default_factory=list)
    seconds: float = 0.0


def soak(ticks: int, seed: int, work_dir: Path, log_every: int = 0) -> tuple[Result, Chaos]:
    rng = random.Random(seed)
    start_s = 1_000_000.0
    hv = Chaos(rng, [random_guest(rng, f"vm{i}", start_s) for i in range(6)])
    path = work_dir / "memcoord.toml"
    path.write_text(good_config(rng))
    config = config_mod.load(path)
    service = Service(path, config, lambda _uri: hv)
    service.tick_budget_s = lambda: 1e9  # type: ignore[method-assign]  # the clock is simulated, not wall time
    result = Result()
    process = psutil.Process()
    began_s = time.monotonic()
    stale: set[str] = set()
    grants: dict[str, tuple[int, int]] = {}  # domain -> (tick, KiB) of memcoord's last growth of it
    grown_on: dict[str, int] = {}  # domain -> the guest's stats timestamp when memcoord last grew it
    for tick in range(ticks):
        # -- the world moves ------------------------------------------------------------------------------------
        hv.advance(INTERVAL_S)
        hv.host_other_used_kib = max(
            0, min(HOST_TOTAL_KIB // 2, hv.host_other_used_kib + mib_to_kib(rng.randint(-256, 256)))
        )
        if rng.random() < P_GUEST_LEAVES and hv.guests:
            del hv.guests[rng.choice(list(hv.guests))]
            hv._fault("guest left")
        if rng.random() < P_GUEST_ARRIVES and len(hv.guests) < MAX_GUESTS:
            name = f"vm{rng.choice([i for i in range(MAX_GUESTS) if f'vm{i}' not in hv.guests])}"
            hv.guests[name] = random_guest(rng, name, hv.now_s)
            hv.stats_period_s.pop(name, None)  # a new domain: memcoord must set its period
            hv._fault("guest arrived")
        for name, g in hv.guests.items():
            if name not in stale and rng.random() < P_STATS_LOST:
                stale.add(name)
                g.has_balloon_stats = False  # stats stop refreshing: stale, or missing for a new guest
                hv._fault("stats lost")
            elif name in stale and rng.random() < P_STATS_BACK:
                stale.discard(name)
                g.has_balloon_stats = True
        stale &= set(hv.guests)
        if rng.random() < P_RELOAD:
            if rng.random() < P_BAD_RELOAD:
                path.write_bytes(rng.choice(BAD_CONFIGS).encode("utf-8", "surrogateescape"))
                result.reloads_bad += 1
            else:
                path.write_text(good_config(rng))
                result.reloads_ok += 1
            service.reload()
        # -- one tick of the real service, then the invariants ------------------------------------------------------
        config = service.config
        before_kib = worst_case_available_kib(hv, config)
        available_kib = hv.host_available_kib()
        # Granted in the last ticks and not touched yet, as the targets stand before this tick.
        outstanding_kib = sum(
            min(granted_kib, max(0, hv.guests[name].target_kib - hv.guests[name].rss_kib))
            for name, (at_tick, granted_kib) in grants.items()
            if name in hv.guests and tick - at_tick <= GRANT_TICKS
        )
        hv.accepted = []
        try:
            ok = service.tick()
        except Exception as exc:  # the loop must never stop
            result.violations.append(f"tick {tick}: tick() raised {exc!r}")
            break
        result.ticks += 1
        result.ok_ticks += ok
        if not ok and not hv.unreachable:
            result.violations.append(f"tick {tick}: tick() failed with the hypervisor reachable")
        result.changes += len(hv.accepted)
        for c in hv.accepted:
            g = hv.guests.get(c.domain)
            if g is None:
                continue
            ceiling_kib = config.ceiling_kib(c.domain, g.max_kib)
            # A guest above a ceiling a reload lowered is brought down gradually: only raising past it is wrong.
            if c.to_kib > c.from_kib and c.to_kib > ceiling_kib:
                result.violations.append(
                    f"tick {tick}: {c.domain} set to {c.to_kib} KiB above its ceiling {ceiling_kib}"
                )
            if c.to_kib < c.from_kib and c.to_kib < config.floor_kib(c.domain, g.max_kib):
                result.violations.append(f"tick {tick}: {c.domain} lowered to {c.to_kib} KiB below its floor")
            if not config.manages(c.domain):
                result.violations.append(f"tick {tick}: {c.domain} is not managed but was changed")
        # A guest below its floor is raised to it whatever the host has (the policy's promise to the guest).
        floors = [c for c in hv.accepted if c.why is not None and c.why.rule is Rule.FLOOR]
        grown_kib = sum(c.delta_kib for c in hv.accepted if c.delta_kib > 0 and c not in floors)
        if grown_kib:
            guard_kib = mib_to_kib(config.guard_mib(hv.host_total_kib))
            # The promise: this tick's growth, once touched, leaves the host at or above its guard, after what
            # memcoord granted in the last GRANT_TICKS ticks that the guests have not touched yet; a guest that
            # would run out of memory before the next tick may be lent those grants, never the guard itself.
            # A grant memcoord took back this tick (a lowered target) is no longer outstanding: it may have been
            # given to a guest starving now.
            # (The idle tax paid to the starving in the same tick is lent the same way.)
            lent = any(c.why is not None and c.why.rule in (Rule.LENT, Rule.TAX) for c in hv.accepted)
            # Where each earlier grant may still be touched up to: the target, but for a guest changed this tick,
            # its lowered target, or the target before this tick's growth (which is counted apart, as grown_kib).
            was_kib = {c.domain: c.to_kib if c.delta_kib < 0 else c.from_kib for c in hv.accepted}
            # The guard holds nothing for a guest silent longer than the bound (issue 20: what it holds for a silent
            # guest is released after a bounded time): its grant is outside the promise, as a frozen guest's is.
            silence_s = silence_limit_s(config)
            still_kib = sum(
                min(granted_kib, max(0, was_kib.get(name, hv.guests[name].target_kib) - hv.guests[name].rss_kib))
                for name, (at_tick, granted_kib) in grants.items()
                if name in hv.guests
                and tick - at_tick <= GRANT_TICKS
                and hv.now_s - hv.guests[name].last_update_s <= silence_s
            )
            outstanding_kib = min(outstanding_kib, still_kib)
            # What this tick's lowerings make QEMU give back (the pages it backs above the new target) funds
            # growth in the same tick: the balloons inflate while the grown ones deflate.
            released_kib = sum(
                max(0, hv.guests[c.domain].rss_kib - c.to_kib) - max(0, hv.guests[c.domain].rss_kib - c.from_kib)
                for c in hv.accepted
                if c.delta_kib < 0 and c.domain in hv.guests
            )
            room_kib = available_kib - guard_kib - (0 if lent else outstanding_kib) + released_kib
            if grown_kib > max(0, room_kib):
                result.violations.append(
                    f"tick {tick}: grew {grown_kib // KIB_PER_MIB} MiB with {room_kib // KIB_PER_MIB} MiB above"
                    f" the guard ({outstanding_kib // KIB_PER_MIB} MiB granted before, untouched); "
                    + describe(hv, service, config)
                )
            # Stricter, reported: every managed guest filling its whole target.
            after_kib = worst_case_available_kib(hv, config)
            if after_kib < min(guard_kib, before_kib):
                frozen = sorted(n for n in stale if config.manages(n))
                (result.worst_case_frozen if frozen else result.worst_case).add(
                    f"tick {tick}: growth left {after_kib // KIB_PER_MIB} MiB worst case,"
                    f" guard {guard_kib // KIB_PER_MIB} MiB,"
                    f" {before_kib // KIB_PER_MIB} MiB before; frozen stats {frozen}; " + describe(hv, service, config)
                )
        for c in hv.accepted:
            if c.delta_kib > 0 and c not in floors:  # (a floor raise is the guest's due, not a grant to keep)
                grants[c.domain] = (tick, c.delta_kib)
            elif c.delta_kib < 0 and c.domain in grants:  # a lowering takes the untouched grant back first
                at_tick, granted_kib = grants[c.domain]
                grants[c.domain] = (at_tick, max(0, granted_kib + c.delta_kib))
            if c.action is Action.GROW and c.domain in hv.guests:
                sample_s = hv.guests[c.domain].last_update_s
                if grown_on.get(c.domain) == sample_s:
                    moved = f"{c.from_kib // KIB_PER_MIB}->{c.to_kib // KIB_PER_MIB}"
                    result.regrown_same_sample.add(f"tick {tick}: {c.domain} {moved}")
                grown_on[c.domain] = sample_s
        if len(result.violations) > 20:
            break
        if tick in (ticks // 10, ticks // 2, ticks - 1):
            result.rss_mib.append(process.memory_info().rss / 2**20)
        if log_every and tick and tick % log_every == 0:
            print(f"  {tick} ticks, {result.changes} changes, {len(result.violations)} violations", file=sys.stderr)
    result.seconds = time.monotonic() - began_s
    return result, hv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)
    import logging
    import tempfile

    logging.getLogger("memcoord").setLevel(logging.CRITICAL)  # a million ticks of journal lines: not the point
    with tempfile.TemporaryDirectory() as tmp:
        result, hv = soak(args.ticks, args.seed, Path(tmp), log_every=max(1, args.ticks // 10))
    print(
        f"chaos soak, seed {args.seed}: {result.ticks} ticks ({result.ok_ticks} reached the hypervisor) "
        f"in {result.seconds:.0f} s, {result.changes} changes accepted"
    )
    print(
        f"faults: {', '.join(f'{k} {v}' for k, v in sorted(hv.faults.items()))}; "
        f"reloads: {result.reloads_ok} good, {result.reloads_bad} bad"
    )
    print(f"RSS: {' -> '.join(f'{r:.1f}' for r in result.rss_mib)} MiB (at 10 %, 50 % and 100 % of the ticks)")
    print(
        f"worst case (every managed guest fills its target) below the guard after growth: "
        f"{result.worst_case.count} ticks, {result.worst_case_frozen.count} more with a guest's stats frozen"
    )
    for v in (result.worst_case.examples + result.worst_case_frozen.examples)[:3]:
        print(f"  {v[:300]}")
    print(f"grown again on the stats sample of its previous growth: {result.regrown_same_sample.count} times")
    for v in result.regrown_same_sample.examples[:3]:
        print(f"  {v}")
    print(f"invariant violations: {len(result.violations)}")
    for v in result.violations[:20]:
        print(f"  {v}")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
