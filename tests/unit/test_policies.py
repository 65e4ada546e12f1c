"""The comparison policies (bench/policies) behave as their sources say (oVirt MOM balloon.rules, Proxmox
AutoBalloon.pm); the product's simulator runs them only when bench hands them in."""

from __future__ import annotations

import pytest

from bench.policies import POLICIES, make
from bench.policies.proxmox import MAX_CHANGE_KIB, compute_alg1
from bench.policies.proxmox import _Vm as Vm
from memcoord.core.config import Config
from memcoord.core.model import DomainStats, HostStats, Snapshot, mib_to_kib
from memcoord.core.policy import PolicyState, applied, decide

T0_S = 1_000_000.0


def snap(t_s: float, available_mib: int, doms: list[tuple[str, int, int]], total_mib: int = 8192) -> Snapshot:
    """doms: (name, current_mib, unused_mib), all with a 2048 MiB max and fresh stats."""
    return Snapshot(
        HostStats(mib_to_kib(available_mib), mib_to_kib(total_mib)),
        tuple(
            DomainStats(
                n, mib_to_kib(cur), mib_to_kib(2048), mib_to_kib(unused), mib_to_kib(unused), None, None, int(t_s)
            )
            for n, cur, unused in doms
        ),
        t_s,
    )


def test_make_names_the_known_policies() -> None:
    with pytest.raises(KeyError, match="known: memcoord, mom, proxmox"):
        make("nope", Config())
    assert set(POLICIES) >= {"memcoord", "mom", "proxmox"}


def test_memcoord_wrapper_gives_exactly_policy_decide() -> None:
    config = Config()
    wrapped = make("memcoord", config)
    state = PolicyState()
    for i, unused_mib in enumerate([100, 100, 90, 500, 500]):
        s = snap(T0_S + i, 4000, [("a", 1024, unused_mib), ("b", 1024, 600)])
        plan, state = decide(s, state, config)
        state = applied(state, plan.changes, s.taken_at_s)
        assert wrapped.decide(s) == plan.changes


def test_mom_grows_every_guest_5_percent_when_the_host_is_free_and_only_every_10_s() -> None:
    mom = make("mom", Config())
    changes = mom.decide(snap(T0_S, 6000, [("a", 1000, 500), ("b", 2000, 100)]))
    assert [(c.domain, c.to_kib) for c in changes] == [("a", int(mib_to_kib(1000) * 1.05)), ("b", mib_to_kib(2048))]
    assert mom.decide(snap(T0_S + 5, 6000, [("a", 1050, 500), ("b", 2048, 100)])) == ()
    assert mom.decide(snap(T0_S + 10, 6000, [("a", 1050, 500), ("b", 2048, 100)]))


def test_mom_shrinks_every_guest_5_percent_under_host_pressure_even_below_the_floor() -> None:
    mom = make("mom", Config())
    changes = mom.decide(snap(T0_S, 1000, [("a", 1000, 500), ("b", 260, 100)]))  # 1000/8192 < 20 % free
    # balloon.rules bounds a shrink by min(balloon_min, used + free share), so the bound is never above the
    # floor: b (160 MiB used) goes below 256 MiB, and a busy guest is shrunk whatever it uses.
    assert [(c.domain, c.to_kib) for c in changes] == [("a", int(mib_to_kib(1000) * 0.95)), ("b", 252928)]


def test_proxmox_moves_at_most_100_mib_per_vm_and_feeds_pressured_vms_first() -> None:
    vms = {
        "hungry": Vm(mib_to_kib(512), mib_to_kib(256), mib_to_kib(2048), mib_to_kib(10)),
        "fat": Vm(mib_to_kib(512), mib_to_kib(256), mib_to_kib(2048), mib_to_kib(400)),
    }
    res = compute_alg1(vms, mib_to_kib(1000), MAX_CHANGE_KIB)
    assert res == {"hungry": mib_to_kib(612)}
    shrink = compute_alg1(vms, -mib_to_kib(1000), MAX_CHANGE_KIB)
    assert shrink == {"fat": mib_to_kib(412)}


def test_proxmox_splits_by_shares_and_ignores_a_goal_within_10_mib() -> None:
    vms = {n: Vm(mib_to_kib(512), mib_to_kib(256), mib_to_kib(2048), mib_to_kib(400)) for n in ("a", "b")}
    assert compute_alg1(vms, mib_to_kib(5), MAX_CHANGE_KIB) == {}
    res = compute_alg1(vms, mib_to_kib(100), MAX_CHANGE_KIB)
    assert res == {"a": mib_to_kib(562), "b": mib_to_kib(562)}


def test_proxmox_runs_on_a_10_s_cycle_toward_80_percent_host_use() -> None:
    px = make("proxmox", Config())
    first = px.decide(snap(T0_S, 4096, [("a", 1024, 100)]))  # 50 % used: grow
    assert [c.delta_kib for c in first] == [MAX_CHANGE_KIB]
    assert px.decide(snap(T0_S + 1, 4096, [("a", 1124, 100)])) == ()
    later = px.decide(snap(T0_S + 10, 1000, [("a", 1124, 900)]))  # 88 % used: shrink
    assert [c.delta_kib for c in later] == [-MAX_CHANGE_KIB]
