"""One tick of the loop, the same for the daemon and the simulator: sample -> managed filter -> stats period ->
decide -> apply -> record what was (or may have been) applied.

`Service.tick` wraps it with its reporting (journal, STATUS, metrics, deadline); `sim_run.run` wraps it with
its measurements. Neither calls `decide` itself, so neither can forget to tell the policy what was applied:
that is what makes the next ticks wait for a balloon on its way instead of growing a guest twice.

A policy is a pair of pure functions over an explicit state (`LoopPolicy`): memcoord's own is `MEMCOORD`
(`policy.decide` and `policy.applied` over a `PolicyState`); bench/ runs its peers through the same interface.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from memcoord.core.model import ApplyResult, Plan, Rule, Snapshot
from memcoord.core.policy import PolicyState, applied, decide
from memcoord.core.port import DOMAIN_GONE, SKIPPED_DEADLINE, Hypervisor

if TYPE_CHECKING:
    from memcoord.core.config import Config


class LoopPolicy(Protocol):
    """What the loop needs of a policy: a state to start from, a plan from a snapshot of the managed guests, and a
    new state once the loop knows which of the plan's changes were really set. The name labels its runs."""

    name: str

    def first_state(self, config: Config) -> Any: ...

    def decide(self, snapshot: Snapshot, state: Any, config: Config) -> tuple[Plan, Any]: ...

    def applied(self, state: Any, results: Sequence[ApplyResult], now_s: float) -> Any: ...


class _Memcoord:
    """memcoord's policy: `policy.decide` and `policy.applied` over a `PolicyState`."""

    name = "memcoord"

    def first_state(self, config: Config) -> PolicyState:
        return PolicyState()

    def decide(self, snapshot: Snapshot, state: PolicyState, config: Config) -> tuple[Plan, Any]:
        return decide(snapshot, state, config)

    def applied(self, state: PolicyState, results: Sequence[ApplyResult], now_s: float) -> PolicyState:
        return applied(state, results, now_s)


MEMCOORD: LoopPolicy = _Memcoord()


@dataclass(frozen=True)
class StepResult:
    """What one tick saw and did, for the caller to report or measure.

    results: the changes tried, each with its outcome; changes skipped because the deadline was spent are not
    among them (they were not attempted and are decided again next tick), only counted in `skipped`; nor are
    growths held back because a lowering they counted on failed (`apply_lowerings_first`), counted in
    `held_back`; nor changes to domains gone since the sample (`port.DOMAIN_GONE`).
    """

    snapshot: Snapshot  # every running domain, managed or not
    managed: tuple[str, ...]
    period_failures: tuple[str, ...]  # first failures to set a domain's stats period, one message each
    plan: Plan
    results: tuple[ApplyResult, ...]
    skipped: int
    state: Any  # the policy state for the next tick
    held_back: int = 0
    # The plan's headroom less what its lowerings that did not land would have given back: what make-room is
    # answered from, so that a VM about to start is not told of room on memory that did not come back.
    headroom_kib: int = 0


def decide_paused(loop_policy: LoopPolicy, snapshot: Snapshot, state: Any, config: Config) -> tuple[Plan, Any]:
    """`loop_policy.decide` with Python's cyclic garbage collector paused, then one collection of the young
    objects it left (what the collector would do at its next chance anyway, here where it is timed).

    A decision makes several objects per guest, nearly all freed by their reference counts when the tick is
    over: left running, the collector stops the decision every 700 new objects to look for cycles there are
    none of, and every few ticks goes through all the process's older objects too. bench/scale.py times this
    call, collection included.
    """
    if not gc.isenabled():
        return loop_policy.decide(snapshot, state, config)
    gc.disable()
    try:
        return loop_policy.decide(snapshot, state, config)
    finally:
        gc.enable()
        gc.collect(0)


def managed_snapshot(snapshot: Snapshot, config: Config) -> Snapshot:
    """The snapshot without the domains the config does not manage: the policy never sees them."""
    return replace(
        snapshot,
        domains=tuple(
            d for d in snapshot.domains if config.domain_rules(d.name, d.max_kib, d.settings).exclusion is None
        ),
    )


# ApplyResult.error of a growth not sent because lowerings in the same tick the plan counted on failed: not a
# failure of the change (the service does not warn about it, and counts it apart); decided again next tick.
HELD_BACK = "not sent: a lowering in this tick that it counted on failed"


def not_given_back_kib(results: Iterable[ApplyResult]) -> int:
    """What the lowerings among results that did not land (refused, or not sent) would have given back."""
    return sum(-r.change.delta_kib for r in results if r.change.delta_kib < 0 and not r.may_have_landed)


def apply_lowerings_first(hypervisor: Hypervisor, plan: Plan, deadline_s: float | None = None) -> list[ApplyResult]:
    """Set the plan's lowerings, then its growths. A plan may grow guests on what its lowerings give back in the
    same tick (relief, surplus, the idle tax): when lowerings fail, and what they would have given back is more
    than the budget the plan left, the growths are held back (HELD_BACK) and decided again on the next tick's
    figures, so that they cannot take the host below its guard on memory that did not come back. Where the plan
    left enough, a failed lowering holds nothing back: a guest whose setMemory always fails (a migrating guest, an
    ACL) cannot stop the others growing on a host with room. A raise to a guest's floor is its due whatever the
    host has, and is set all the same. A lowering of unknown outcome may have landed and counts as set, as the
    policy counts it. A lowering the deadline left unsent leaves no time for the growths either: they are left
    for the next tick too."""
    lowerings = [c for c in plan.changes if c.delta_kib < 0]
    results = hypervisor.apply(lowerings, deadline_s=deadline_s) if lowerings else []
    growths = [c for c in plan.changes if c.delta_kib >= 0]
    if any(r.error == SKIPPED_DEADLINE for r in results):
        return results + [ApplyResult(c, SKIPPED_DEADLINE, sent=False) for c in growths]
    if not_given_back_kib(results) > max(0, plan.host_headroom_kib):
        floors = [c for c in growths if c.why is not None and c.why.rule is Rule.FLOOR]
        results += [ApplyResult(c, HELD_BACK, sent=False) for c in growths if c not in floors]
        growths = floors
    return results + (hypervisor.apply(growths, deadline_s=deadline_s) if growths else [])


def step(
    hypervisor: Hypervisor,
    config: Config,
    state: Any,
    loop_policy: LoopPolicy = MEMCOORD,
    deadline_s: float | None = None,
    reserved_kib: Callable[[Snapshot], int] | None = None,
    only: frozenset[str] | None = None,
) -> StepResult:
    """One tick. Raises HypervisorError when the hypervisor cannot be sampled (nothing else is then done).

    reserved_kib: what the host holds above its guard for a VM about to start (make-room), given the sample; the
    snapshot carries it (`HostStats.reserved_kib`) to the policy and to whoever reports the tick. only: sample
    just these domains (`Hypervisor.sample`), while a domain is being started.

    The policy is told what became of every change (`LoopPolicy.applied`), at the snapshot's time (the clock the
    policy's timing is on: the guests' own stats timestamps are compared with it). One whose outcome is unknown
    (sent, no answer in time) may land any time: it counts as set, so that the guard holds a grow and a lowering
    starts the settle wait until the balloon's own size says what happened. A guest whose lowerings the
    hypervisor keeps refusing is asked last for a while; a change never sent says nothing of its guest.
    """
    snapshot = hypervisor.sample(deadline_s=deadline_s) if only is None else hypervisor.sample(deadline_s, only)
    if reserved_kib is not None:
        snapshot = replace(snapshot, host=replace(snapshot.host, reserved_kib=reserved_kib(snapshot)))
    # The guard and the profile's values scale with the host's memory: the policy reads them resolved.
    config = config.for_host(snapshot.host.total_kib)
    seen = managed_snapshot(snapshot, config)
    managed = tuple(d.name for d in seen.domains)
    failures = hypervisor.ensure_stats_period(managed, config.loop.stats_period_s, deadline_s=deadline_s)
    plan, state = decide_paused(loop_policy, seen, state, config)
    results: list[ApplyResult] = []
    if plan.changes:
        results = apply_lowerings_first(hypervisor, plan, deadline_s)
        state = loop_policy.applied(state, results, snapshot.taken_at_s)
    attempted = tuple(r for r in results if r.error not in (SKIPPED_DEADLINE, HELD_BACK, DOMAIN_GONE))
    return StepResult(
        snapshot=snapshot,
        managed=managed,
        period_failures=tuple(failures),
        plan=plan,
        results=attempted,
        skipped=sum(r.error == SKIPPED_DEADLINE for r in results),
        state=state,
        held_back=sum(r.error == HELD_BACK for r in results),
        headroom_kib=plan.host_headroom_kib - not_given_back_kib(results),
    )
