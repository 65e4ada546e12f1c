"""A setMemory whose outcome is unknown (sent, no answer in time) may still land: step() records it with the
policy like an accepted one, and the journal, the metrics and the timeline say "outcome unknown"."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import libvirt
import pytest

from memcoord.admin.status import render
from memcoord.core.config import Config, parse
from memcoord.core.model import Action, ApplyResult, Band, Change, Outcome, Plan, Reason, Rule, Snapshot, mib_to_kib
from memcoord.core.policy import PolicyState
from memcoord.core.port import DOMAIN_GONE, SKIPPED_DEADLINE
from memcoord.core.step import HELD_BACK, apply_lowerings_first, step
from memcoord.daemon import timeline
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import Service
from memcoord.hypervisor.libvirt import LibvirtHypervisor
from memcoord.sim.host import Hog, SimGuest, SimulatedHypervisor

SIM_START_S = 1_000_000.0  # SimulatedHypervisor's default start


def _change(name: str, action: Action, from_mib: int, to_mib: int) -> Change:
    return Change(name, action, mib_to_kib(from_mib), mib_to_kib(to_mib), "test")


class _Scripted:
    """A policy that plans the given changes once and keeps what applied() is told: the changes that may have
    landed, and those the hypervisor refused, as `policy.applied` reads them."""

    def __init__(self, changes: Sequence[Change], headroom_mib: int = 0) -> None:
        self.changes, self.headroom_kib = tuple(changes), mib_to_kib(headroom_mib)
        self.told: list[Change] = []
        self.refused: list[Change] = []

    def decide(self, snapshot: Snapshot, state: Any, config: Config) -> tuple[Plan, Any]:
        return Plan(changes=self.changes, classes={}, host_headroom_kib=self.headroom_kib), state

    def applied(self, state: Any, results: Sequence[ApplyResult], now_s: float) -> Any:
        self.told.extend(r.change for r in results if r.may_have_landed)
        self.refused.extend(r.change for r in results if r.sent and not r.may_have_landed)
        return state


class _Answers:
    """A simulated host whose apply() answers each change as scripted by its domain name."""

    def __init__(self, sim: SimulatedHypervisor, outcomes: dict[str, str]) -> None:
        self.sim, self.outcomes = sim, outcomes

    def __getattr__(self, name: str) -> object:
        return getattr(self.sim, name)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        out = []
        for c in changes:
            kind = self.outcomes[c.domain]
            if kind == "set":
                out.extend(self.sim.apply([c]))
            elif kind == "unknown":
                out.append(ApplyResult(c, "setMemory: no answer in 1.0 s", unknown=True))
            elif kind == "skipped":
                out.append(ApplyResult(c, SKIPPED_DEADLINE, sent=False))
            elif kind == "gone":
                out.append(ApplyResult(c, DOMAIN_GONE, sent=False))
            else:
                out.append(ApplyResult(c, "refused"))
        return out


def test_step_tells_the_policy_which_changes_may_have_landed_and_which_were_refused() -> None:
    names = ("set", "unknown", "failed", "skipped", "gone")
    guests = [SimGuest(n, max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024)) for n in names]
    sim = SimulatedHypervisor(guests, host_total_kib=mib_to_kib(16384))
    changes = [
        _change("set", Action.GROW, 1024, 1100),
        _change("unknown", Action.RECLAIM, 1024, 900),
        _change("failed", Action.GROW, 1024, 1100),
        _change("skipped", Action.GROW, 1024, 1100),
        _change("gone", Action.RECLAIM, 1024, 900),
    ]
    policy = _Scripted(changes, headroom_mib=1024)  # what the failed lowering did not give back holds nothing back
    done = step(_Answers(sim, {n: n for n in names}), Config(), None, policy)  # type: ignore[arg-type]
    assert sorted(c.domain for c in policy.told) == ["set", "unknown"]
    # Neither a skipped change nor one to a domain gone from the adapter's list was refused: neither was sent.
    assert [c.domain for c in policy.refused] == ["failed"]
    # A domain gone since the sample is no failure to report (an admin shut it down): the service is not told.
    assert {r.change.domain: r.outcome for r in done.results} == {
        "set": Outcome.SET,
        "unknown": Outcome.UNKNOWN,
        "failed": Outcome.FAILED,
    }
    assert done.skipped == 1


class _LandsLate:
    """A host whose setMemory calls get no answer in time while `unanswered` is set, and land `lag` ticks later
    (as a call left running in its thread does once the QEMU monitor or libvirtd wakes up)."""

    def __init__(self, sim: SimulatedHypervisor, lag: int) -> None:
        self.sim, self.lag, self.unanswered = sim, lag, True
        self.sent: list[Change] = []
        self._landing: list[tuple[int, Change]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.sim, name)

    def tick(self) -> None:
        """One tick passed: what is due lands."""
        due = [c for t, c in self._landing if t <= 1]
        self._landing = [(t - 1, c) for t, c in self._landing if t > 1]
        self.sim.apply(due)

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        if not self.unanswered:
            return self.sim.apply(changes)
        self.sent.extend(changes)
        self._landing.extend((self.lag, c) for c in changes)
        return [ApplyResult(c, f"setMemory: no answer from sim in {1.0:.1f} s", unknown=True) for c in changes]


def _grower() -> SimGuest:
    return SimGuest(
        "grower",
        max_kib=mib_to_kib(4096),
        target_kib=mib_to_kib(1024),
        workload=Hog(mib_to_kib(60), start_s=SIM_START_S),
    )


def test_a_grow_of_unknown_outcome_is_held_while_it_may_land_not_granted_twice(tmp_path: Path) -> None:
    """The grower starves; its first grow gets no answer and lands two ticks later. Counted as set (policy.applied
    then holds it in the guard), it is not sent again while on its way: a second call would queue behind the
    hung one, and the policy would be deciding from a balloon size that is no longer the truth."""
    grower = _grower()
    sim = SimulatedHypervisor([grower], host_total_kib=mib_to_kib(16384))
    late = _LandsLate(sim, lag=2)
    late.unanswered = False
    config = parse("[loop]\ninterval_s = 1.0\n")
    state: Any = PolicyState()
    for _ in range(40):  # until the policy grows it (stats flow, the hog makes it starve)
        late.unanswered = True
        done = step(late, config, state)  # type: ignore[arg-type]
        state = done.state
        late.tick()
        sim.advance(1.0)
        if late.sent:
            break
    assert len(late.sent) == 1 and late.sent[0].action is Action.GROW, late.sent
    first = late.sent[0]
    for _ in range(2):  # the two ticks before it lands: the guest still looks as before, and still starves
        done = step(late, config, state)  # type: ignore[arg-type]
        state = done.state
        late.tick()
        sim.advance(1.0)
    assert late.sent == [first], f"grown again before its first grow landed: {late.sent}"
    assert grower.target_kib == first.to_kib  # and the first did land


def test_journal_metrics_and_timeline_say_outcome_unknown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sim = SimulatedHypervisor([_grower()], host_total_kib=mib_to_kib(16384))
    late = _LandsLate(sim, lag=1)
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[timeline]\npath = "{tmp_path / "timeline.jsonl"}"\n')
    observer = Observer()
    service = Service(cfg, parse(cfg.read_text()), lambda _uri: late, observer=observer)  # type: ignore[arg-type,return-value]
    caplog.set_level(logging.INFO, logger="memcoord")
    observer.start()
    try:
        for _ in range(40):
            assert service.tick()
            late.tick()
            sim.advance(1.0)
            if late.sent:
                break
    finally:
        observer.stop()
    assert late.sent, "the policy never grew the grower: nothing to report"
    warnings = [r for r in caplog.records if "setMemory outcome unknown" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING, [r.getMessage() for r in caplog.records]
    assert warnings[0].__dict__["MEMCOORD_OUTCOME"] == "unknown"
    assert not [r for r in caplog.records if "setMemory failed" in r.getMessage()]
    scrape = observer.endpoint.text().decode()
    assert 'memcoord_errors_total{kind="set_memory_unknown"} 1.0' in scrape, scrape
    assert 'memcoord_errors_total{kind="set_memory"} 0.0' in scrape, scrape
    lines = [json.loads(x) for x in (tmp_path / "timeline.jsonl").read_text().splitlines()]
    acts = [a for line in lines for a in timeline.actions(line)]
    assert [a.outcome for a in acts] == [Outcome.UNKNOWN] and not acts[0].applied, acts
    assert observer.view is not None
    assert any("OUTCOME UNKNOWN: setMemory: no answer" in line for line in render(observer.view)), render(observer.view)


class _Dom:
    """A libvirt domain handle whose setMemoryFlags raises the given error, or hangs for hang_s."""

    def __init__(self, code: int = 0, domain: int = 0, alive: bool = True, hang_s: float = 0.0) -> None:
        self.code, self.domain, self.alive, self.hang_s = code, domain, alive, hang_s

    def setMemoryFlags(self, _kib: int, _flags: int) -> int:
        if self.hang_s:
            time.sleep(self.hang_s)
            return 0
        exc = libvirt.libvirtError("injected")
        exc.err = (self.code, self.domain, "injected error", libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
        raise exc

    def connect(self) -> _Dom:
        return self

    def isAlive(self) -> int:
        return int(self.alive)


@pytest.mark.parametrize(
    ("dom", "outcome"),
    [
        (_Dom(libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_FROM_DOMAIN), Outcome.FAILED),  # refused
        (_Dom(libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_QEMU), Outcome.FAILED),  # not running
        (_Dom(libvirt.VIR_ERR_RPC, libvirt.VIR_FROM_RPC), Outcome.UNKNOWN),  # the connection broke under it
        (_Dom(libvirt.VIR_ERR_OPERATION_FAILED, libvirt.VIR_FROM_QEMU, alive=False), Outcome.UNKNOWN),
        (_Dom(hang_s=0.5), Outcome.UNKNOWN),  # no answer before the deadline
    ],
    ids=["refused", "not-running", "rpc-error", "connection-dead", "no-answer"],
)
def test_the_libvirt_adapter_tells_a_failed_set_memory_from_one_of_unknown_outcome(dom: _Dom, outcome: Outcome) -> None:
    hv = LibvirtHypervisor("qemu:///system")
    hv._domains = {"g": dom}  # type: ignore[dict-item]
    [result] = hv.apply([_change("g", Action.GROW, 1024, 1100)], deadline_s=time.monotonic() + 0.2)
    assert result.outcome is outcome and result.sent, result


def test_the_libvirt_adapter_says_which_changes_it_never_sent() -> None:
    """A domain gone from its list, and a call not made for the deadline: failures that say nothing of the guest
    (the policy does not take them for a guest that did not give)."""
    hv = LibvirtHypervisor("qemu:///system")
    hv._domains = {"g": _Dom(libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_FROM_DOMAIN)}  # type: ignore[dict-item]
    gone, late = hv.apply([_change("h", Action.RECLAIM, 1024, 900), _change("g", Action.RECLAIM, 1024, 900)], 0.0)
    assert (gone.sent, gone.error, late.sent, late.error) == (False, DOMAIN_GONE, False, SKIPPED_DEADLINE)


def test_a_set_memory_to_a_domain_destroyed_since_the_sample_is_not_a_failure() -> None:
    """libvirt's own test driver (in process, no daemon): its domain is destroyed between the sample and the
    setMemory, as an admin's `virsh shutdown` lands mid-tick. The change was not made and says nothing of the
    guest; the service reports no setMemory error for it (step leaves it out of the results)."""
    hv = LibvirtHypervisor("test:///default")  # each connection to it has its own domains: hv's is the one
    hv.sample()
    hv._domains["test"].destroy()
    [result] = hv.apply([_change("test", Action.RECLAIM, 1024, 900)])
    assert (result.sent, result.error) == (False, DOMAIN_GONE), result
    hv.close()


class _Calls(_Answers):
    """_Answers that keeps each apply() call's changes, in order."""

    def __init__(self, sim: SimulatedHypervisor, outcomes: dict[str, str]) -> None:
        super().__init__(sim, outcomes)
        self.calls: list[list[str]] = []

    def apply(self, changes: Sequence[Change], deadline_s: float | None = None) -> list[ApplyResult]:
        self.calls.append([c.domain for c in changes])
        return super().apply(changes, deadline_s)


def _floor_raise(name: str) -> Change:
    band = Band(mib_to_kib(600), mib_to_kib(600), mib_to_kib(600), mib_to_kib(2048), "test")
    why = Reason(Rule.FLOOR, band, 0, 100, None, "usable", 0.0, 0.0)
    return Change(name, Action.CLAMP, mib_to_kib(512), mib_to_kib(600), "floor", why)


def _apply_host(outcomes: dict[str, str]) -> _Calls:
    guests = [SimGuest(n, max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024)) for n in outcomes]
    return _Calls(SimulatedHypervisor(guests, host_total_kib=mib_to_kib(16384)), outcomes)


def _apply(host: _Calls, changes: list[Change], left_mib: int = 0) -> dict[str, ApplyResult]:
    """apply_lowerings_first on a plan that leaves left_mib of its budget."""
    plan = Plan(changes=tuple(changes), classes={}, host_headroom_kib=mib_to_kib(left_mib))
    return {r.change.domain: r for r in apply_lowerings_first(host, plan)}  # type: ignore[arg-type]


def test_lowerings_are_set_before_the_growths_they_make_room_for() -> None:
    host = _apply_host({"a-grown": "set", "z-relieved": "set"})
    results = _apply(
        host, [_change("a-grown", Action.GROW, 1024, 1100), _change("z-relieved", Action.RELIEVE, 1024, 900)]
    )
    assert host.calls == [["z-relieved"], ["a-grown"]]
    assert all(r.ok for r in results.values())


def test_a_failed_lowering_the_plan_counted_on_holds_back_the_growths_but_not_a_raise_to_a_floor() -> None:
    """The relief the plan counted on failed (124 MiB; the plan left nothing of its budget): growing a on it could
    take the host below its guard on memory that did not come back. a is decided again next tick; f, below its
    floor, is raised all the same."""
    host = _apply_host({"a": "set", "f": "set", "r": "failed"})
    results = _apply(
        host, [_change("a", Action.GROW, 1024, 1100), _floor_raise("f"), _change("r", Action.RELIEVE, 1024, 900)]
    )
    assert host.calls == [["r"], ["f"]]
    assert results["a"].error == HELD_BACK
    assert results["f"].ok and results["r"].error == "refused"


def test_a_failed_lowering_the_budget_left_covers_holds_nothing_back() -> None:
    """A guest whose setMemory always fails must not stop the others growing on a host with room: the plan left
    200 MiB of its budget, more than the 124 MiB the failed lowering would have given back."""
    host = _apply_host({"a": "set", "r": "failed"})
    results = _apply(host, [_change("a", Action.GROW, 1024, 1100), _change("r", Action.TAX, 1024, 900)], 200)
    assert host.calls == [["r"], ["a"]] and results["a"].ok


def test_a_lowering_of_unknown_outcome_may_land_and_holds_nothing_back() -> None:
    host = _apply_host({"a": "set", "r": "unknown"})
    results = _apply(host, [_change("a", Action.GROW, 1024, 1100), _change("r", Action.TAX, 1024, 900)])
    assert host.calls == [["r"], ["a"]] and results["a"].ok


def test_a_lowering_the_deadline_left_unsent_leaves_the_growths_for_the_next_tick_too() -> None:
    host = _apply_host({"a": "set", "f": "set", "r": "skipped"})
    results = _apply(
        host, [_change("a", Action.GROW, 1024, 1100), _floor_raise("f"), _change("r", Action.RECLAIM, 1024, 900)]
    )
    assert host.calls == [["r"]]
    assert [r.error for r in results.values()] == [SKIPPED_DEADLINE] * 3


def test_step_holds_back_growths_on_a_failed_lowering_and_counts_them_apart() -> None:
    """Through step(), as the daemon runs it: the held-back growth is neither a result (no "setMemory failed"
    warning, no failure in the metrics) nor a deadline skip, and the policy is not told of it."""
    host = _apply_host({"a": "set", "r": "failed"})
    policy = _Scripted([_change("a", Action.GROW, 1024, 1100), _change("r", Action.RELIEVE, 1024, 900)])
    done = step(host, Config(), None, policy)  # type: ignore[arg-type]
    assert host.calls == [["r"]]
    assert [r.change.domain for r in done.results] == ["r"] and not done.results[0].ok
    assert (done.held_back, done.skipped, policy.told) == (1, 0, [])


def test_the_service_says_held_back_growths_once_a_spell_and_never_as_failed_setmemory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three ticks whose relief fails and growth is held back, then one that goes through: one INFO line for the
    spell, no "setMemory failed" for the growth, and the status's last action is not the growth never sent."""
    import memcoord.core.step as step_mod

    host = _apply_host({"a": "set", "r": "failed"})
    changes = (_change("a", Action.GROW, 1024, 1100), _change("r", Action.RELIEVE, 1024, 900))
    ticks = iter([changes] * 3 + [changes[:1]])
    monkeypatch.setattr(
        step_mod, "decide", lambda *_: (Plan(changes=next(ticks), classes={}, host_headroom_kib=0), PolicyState())
    )
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text(f'[status]\npath = "{tmp_path / "state.json"}"\n')
    service = Service(cfg, parse(cfg.read_text()), lambda _uri: host, observer=Observer(publish=False))  # type: ignore[arg-type,return-value]
    caplog.set_level(logging.DEBUG, logger="memcoord")
    for _ in range(3):
        assert service.tick()
        assert "grow a" not in service.last_action
    said = [r for r in caplog.records if "held back" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO, logging.DEBUG, logging.DEBUG]
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("setMemory failed")]
    assert failed and all(" r " in m for m in failed), failed
    assert service.tick() and service.last_action.startswith("grow a")
