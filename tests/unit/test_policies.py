"""The comparison policies (bench/policies) behave as their sources say (oVirt MOM balloon.rules, Proxmox
AutoBalloon.pm); the product's simulator runs them only when bench hands them in."""

from __future__ import annotations

import pytest

from bench.policies import POLICIES, MomPolicy, ProxmoxPolicy, policy
from bench.policies.proxmox import MAX_CHANGE_KIB, compute_alg1
from bench.policies.proxmox import _Vm as Vm
from memcoord.core.config import Config
from memcoord.core.model import ApplyResult, DomainStats, HostStats, Snapshot, mib_to_kib

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


def test_policies_are_named_and_an_unknown_name_lists_the_known() -> None:
    with pytest.raises(KeyError, match="known: memcoord, mom, proxmox"):
        policy("nope")
    assert {name: p.name for name, p in POLICIES.items()} == {
        "memcoord": "memcoord",
        "mom": "mom",
        "proxmox": "proxmox",
    }


def test_a_peer_runs_through_the_loop_interface_with_a_fresh_state_per_run() -> None:
    """The simulator knows only LoopPolicy: a peer's plan is its decide()'s changes, its state the peer itself."""
    config, mom = Config(), policy("mom")
    first, second = mom.first_state(config), mom.first_state(config)
    assert isinstance(first, MomPolicy) and first is not second
    s = snap(T0_S, 6000, [("a", 1000, 500)])
    plan, state = mom.decide(s, first, config)
    assert state is first and plan.changes == MomPolicy(config).decide(s) != ()
    assert mom.applied(state, [ApplyResult(c) for c in plan.changes], T0_S) is first


def test_mom_grows_every_guest_5_percent_when_the_host_is_free_and_only_every_10_s() -> None:
    mom = MomPolicy(Config())
    changes = mom.decide(snap(T0_S, 6000, [("a", 1000, 500), ("b", 2000, 100)]))
    assert [(c.domain, c.to_kib) for c in changes] == [("a", int(mib_to_kib(1000) * 1.05)), ("b", mib_to_kib(2048))]
    assert mom.decide(snap(T0_S + 5, 6000, [("a", 1050, 500), ("b", 2048, 100)])) == ()
    assert mom.decide(snap(T0_S + 10, 6000, [("a", 1050, 500), ("b", 2048, 100)]))


def test_mom_shrinks_every_guest_5_percent_under_host_pressure_even_below_the_floor() -> None:
    mom = MomPolicy(Config())
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
    px = ProxmoxPolicy(Config())
    first = px.decide(snap(T0_S, 4096, [("a", 1024, 100)]))  # 50 % used: grow
    assert [c.delta_kib for c in first] == [MAX_CHANGE_KIB]
    assert px.decide(snap(T0_S + 1, 4096, [("a", 1124, 100)])) == ()
    later = px.decide(snap(T0_S + 10, 1000, [("a", 1124, 900)]))  # 88 % used: shrink
    assert [c.delta_kib for c in later] == [-MAX_CHANGE_KIB]
