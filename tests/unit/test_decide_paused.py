"""The loop runs the policy's decision with the cyclic garbage collector paused, and collects what it left right
after, inside the call bench/scale.py times."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from memcoord.core.config import Config
from memcoord.core.model import ApplyResult, HostStats, Plan, Snapshot, mib_to_kib
from memcoord.core.step import decide_paused, step
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import Idle


class _Cycle:
    """Garbage only the collector frees: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


class _Watching:
    """A policy that notes whether the collector ran during its decision, and leaves a garbage cycle behind."""

    name = "watching"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.collector_on: list[bool] = []
        self.left: weakref.ref[_Cycle] | None = None

    def first_state(self, config: Config) -> None:
        return None

    def decide(self, snapshot: Snapshot, state: Any, config: Config) -> tuple[Plan, Any]:
        self.collector_on.append(gc.isenabled())
        self.left = weakref.ref(_Cycle())
        if self.fail:
            raise RuntimeError("the policy failed")
        return Plan(changes=(), classes={}, host_headroom_kib=0), state

    def applied(self, state: Any, results: Sequence[ApplyResult], now_s: float) -> Any:
        return state


SNAPSHOT = Snapshot(HostStats(available_kib=mib_to_kib(8192), total_kib=mib_to_kib(16384)), (), 1_000_000.0)


@pytest.fixture
def collector_on() -> Iterable[None]:
    was_on = gc.isenabled()
    gc.enable()
    yield
    if not was_on:
        gc.disable()


@pytest.mark.usefixtures("collector_on")
def test_the_collector_is_paused_during_the_decision_and_collects_its_young_objects_after() -> None:
    policy = _Watching()
    decide_paused(policy, SNAPSHOT, None, Config())
    assert policy.collector_on == [False]
    assert gc.isenabled()
    # The cycle the decision left is collected before the call returns (with automatic collection alone it would
    # live until some later allocation made the collector run).
    assert policy.left is not None and policy.left() is None


@pytest.mark.usefixtures("collector_on")
def test_the_collector_runs_again_when_the_decision_fails() -> None:
    with pytest.raises(RuntimeError, match="the policy failed"):
        decide_paused(_Watching(fail=True), SNAPSHOT, None, Config())
    assert gc.isenabled()


def test_a_collector_the_process_turned_off_stays_off() -> None:
    was_on = gc.isenabled()
    gc.disable()
    try:
        policy = _Watching()
        decide_paused(policy, SNAPSHOT, None, Config())
        assert not gc.isenabled()
        assert policy.left is not None and policy.left() is not None  # nothing was collected
    finally:
        if was_on:
            gc.enable()


@pytest.mark.usefixtures("collector_on")
def test_the_loop_decides_with_the_collector_paused() -> None:
    sim = SimulatedHypervisor(
        [SimGuest("a", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024), workload=Idle(mib_to_kib(100)))],
        host_total_kib=mib_to_kib(8192),
    )
    policy = _Watching()
    step(sim, Config(), None, policy)
    assert policy.collector_on == [False]
    assert gc.isenabled()
