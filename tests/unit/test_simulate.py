"""Scenario files and `memcoord simulate`: clear errors, deterministic runs, and the numbers an admin reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.policies import PeerLoop, policy
from memcoord.admin.simulate import (
    SIM_EPOCH_S,
    ScenarioError,
    build_host,
    check_demand,
    load_scenario,
    parse_scenario,
    run,
)
from memcoord.core.config import Config
from memcoord.core.model import KIB_PER_MIB, Change, Snapshot, mib_to_kib
from memcoord.core.step import LoopPolicy
from memcoord.sim.host import SimulatedHypervisor
from tests.helpers.repo import REPO as ROOT

SCENARIOS = sorted((ROOT / "scenarios").glob("*.toml"))

MINIMAL = """
name = "t"
duration_s = 30
[host]
total_mib = 4096
[[guests]]
name = "a"
max_mib = 2048
start_mib = 512
"""


def test_every_shipped_scenario_loads() -> None:
    assert len(SCENARIOS) >= 6
    for path in SCENARIOS:
        assert load_scenario(path).guests


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "colour = 'red'\n", "s.toml: guests.0.colour = 'red': unknown key"),
        (MINIMAL.replace('name = "t"\n', ""), "s.toml: name: required key is missing"),
        (MINIMAL.replace("start_mib = 512", "start_mib = 4096"), "start_mib (4096) is above max_mib (2048)"),
        (MINIMAL + "workload = { kind = 'grow' }\n", "s.toml: guests.0.workload.grow.rate_mib_per_s: required key"),
        (MINIMAL + "workload = { kind = 'jump' }\n", "s.toml: guests.0.workload = "),
        (MINIMAL.replace("total_mib = 4096", "total_mib = -1"), "s.toml: host.total_mib = -1: "),
        (MINIMAL + '[[guests]]\nname = "a"\nmax_mib = 1\nstart_mib = 1\n', "repeated: a"),
        ("name = ", "s.toml: not valid TOML"),
        (
            MINIMAL + "cache = { read_mib_per_s = -1, file_mib = 100 }\n",
            "s.toml: guests.0.cache.read_mib_per_s = -1: ",
        ),
        (
            MINIMAL + "cache = { read_mib_s = 5, file_mib = 100 }\n",
            "s.toml: guests.0.cache.read_mib_s = 5: unknown key",
        ),
        (MINIMAL + "cache = { file_mib = 100 }\n", "s.toml: guests.0.cache.read_mib_per_s: required key is missing"),
        (
            MINIMAL + "cache = { read_mib_per_s = 5, file_mib = 100, start_s = 10, stop_s = 5 }\n",
            "stop_s (5.0) must be after start_s (10.0)",
        ),
        (
            MINIMAL + "[[host.pressure]]\nstart_s = 10\nmib = 0\n",
            "s.toml: host.pressure.0.mib = 0: ",
        ),
        (
            MINIMAL + "[[host.pressure]]\nstart_s = 10\nmib = 500\nramp_s = 10\nend_s = 15\n",
            "end_s (15.0) must be at or after start_s + ramp_s (20.0)",
        ),
        (MINIMAL + "[[host.pressure]]\nmib = 500\n", "s.toml: host.pressure.0.start_s: required key is missing"),
        (MINIMAL + "[[host.pressure]]\nstart_s = 1\nmib = 5\nsize = 3\n", "host.pressure.0.size = 3: unknown key"),
        (
            MINIMAL + "workload = { kind = 'burst', peak_mib = 100, every_s = 60, length_s = 10, ramp_s = 9, "
            "ramp_max_s = 3 }\n",
            "ramp_max_s (3.0) must be at least ramp_s (9.0)",
        ),
    ],
)
def test_scenario_errors_name_file_key_and_value(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, "s.toml")
    assert expected in str(err.value)


def test_missing_trace_file_is_reported_before_the_run(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(MINIMAL + "workload = { kind = 'trace', file = 'nope.csv' }\n")
    with pytest.raises(ScenarioError, match=r"s\.toml: guests\.0\.workload\.file: .*nope\.csv: cannot read"):
        load_scenario(path)


def test_a_run_is_deterministic_for_a_seed() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "fleet-50.toml")
    first = run(scenario, Config(), duration_s=60)
    second = run(scenario, Config(), duration_s=60)
    assert first == second
    reseeded = run(scenario.model_copy(update={"seed": 51}), Config(), duration_s=60)
    assert [g.peak_used_mib for g in reseeded.guests] != [g.peak_used_mib for g in first.guests]


@pytest.mark.parametrize("name", ["memcoord", "mom", "proxmox"])
def test_host_is_never_overcommitted_and_changes_are_counted(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator clamps the host's available memory at 0, so the report's minimum cannot go negative: the
    property is checked on the unclamped value (total - what QEMU and the host hold), at every step."""
    unclamped_kib: list[int] = []
    clamped = SimulatedHypervisor.host_available_kib

    def recording(self: SimulatedHypervisor) -> int:
        unclamped_kib.append(self.host_total_kib - self.host_held_kib())
        return clamped(self)

    monkeypatch.setattr(SimulatedHypervisor, "host_available_kib", recording)
    report = run(load_scenario(ROOT / "scenarios" / "course-2-four-hogs.toml"), Config(), policy(name))
    assert report.policy == name
    assert len(unclamped_kib) >= report.duration_s, "the run did not sample the host every step"
    assert min(unclamped_kib) >= 0, f"{name} overcommitted the host by {-min(unclamped_kib)} KiB"
    assert report.host_min_available_mib == min(unclamped_kib) / KIB_PER_MIB  # the clamp never hid a value
    assert report.balloon_changes > 0


def test_memcoord_keeps_the_host_floor_with_four_hogs() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "course-2-four-hogs.toml")
    guard_mib = Config().host.min_available_mib
    report = run(scenario, Config())
    assert report.host_min_available_mib >= guard_mib
    # The scenario does push the host there: without the guard the hogs take it below.
    unguarded = run(scenario, Config.model_validate({"host": {"min_available_mib": 0}}))
    assert unguarded.host_min_available_mib < guard_mib, unguarded.host_min_available_mib


# -- page cache, host pressure and the run's metrics on small hand-checkable runs ---------------------------

ONE_GUEST = """
name = "t"
duration_s = 60
[host]
total_mib = 4096
other_used_mib = 1024
[[guests]]
name = "a"
max_mib = 2048
start_mib = 1024
"""


class Still:
    """A policy that never moves a balloon: the metrics then follow from the scenario alone."""

    name = "still"

    def __init__(self, config: Config) -> None:
        pass

    def decide(self, snapshot: Snapshot) -> tuple[Change, ...]:
        return ()


@pytest.fixture
def still() -> LoopPolicy:
    """Handed to run() as a loop policy, the way bench/compare.py hands in the peers."""
    return PeerLoop(Still, "still")


def test_host_pressure_from_a_scenario_changes_host_available_over_time() -> None:
    scenario = parse_scenario(ONE_GUEST + "[[host.pressure]]\nstart_s = 10\nmib = 1000\nramp_s = 10\nend_s = 30\n")
    hv = build_host(scenario)
    free_kib = []
    for t_s in (5, 15, 25, 35):
        hv.now_s = SIM_EPOCH_S + t_s
        free_kib.append(hv.host_available_kib())
    assert [free_kib[0] - f for f in free_kib] == [0, mib_to_kib(500), mib_to_kib(1000), 0]


def test_time_below_the_guard_adds_up_and_keeps_the_longest_spell(still: LoopPolicy) -> None:
    # Host available is 4096 - 1024 - 60 (the guest's kernel) = 3012 MiB; each pressure of 2500 MiB takes it to
    # 512 MiB, below the 1024 MiB guard: 10 s, then 3 s.
    scenario = parse_scenario(
        ONE_GUEST
        + "[[host.pressure]]\nstart_s = 10\nmib = 2500\nend_s = 20\n"
        + "[[host.pressure]]\nstart_s = 40\nmib = 2500\nend_s = 43\n"
    )
    report = run(scenario, Config(), still)
    assert report.host_below_guard_s == pytest.approx(13.0, abs=0.25)
    assert report.host_longest_below_guard_s == pytest.approx(10.0, abs=0.15)
    assert report.host_min_available_mib == pytest.approx(512, abs=1)
    assert report.host_guard_mib == 1024


def test_a_host_that_stays_above_its_guard_has_no_time_below_it(still: LoopPolicy) -> None:
    report = run(parse_scenario(ONE_GUEST), Config(), still)
    assert report.host_below_guard_s == 0.0
    assert report.host_longest_below_guard_s == 0.0


def test_idle_memory_is_free_plus_cache_and_cache_is_not_hunger(still: LoopPolicy) -> None:
    workload = "workload = { kind = 'idle', used_mib = 100 }\n"
    plain = run(parse_scenario(ONE_GUEST + workload), Config(), still)
    cached = run(
        parse_scenario(ONE_GUEST + workload + "cache = { read_mib_per_s = 500, file_mib = 4096 }\n"),
        Config(),
        still,
    )
    # The guest holds 1024 MiB and its programs (with the kernel's 60) use 160: 864 MiB idle, cached or not.
    assert plain.mean_idle_mib == pytest.approx(864, abs=1)
    assert cached.mean_idle_mib == pytest.approx(864, abs=1)
    assert plain.mean_cache_mib == 0
    assert cached.mean_cache_mib > 800  # its MemFree sat at the watermark nearly all the run...
    assert cached.starving_guest_s == 0  # ...and it never counted as starving


def test_a_guest_whose_programs_fill_it_starves_for_the_whole_spell(still: LoopPolicy) -> None:
    # 1024 MiB guest, programs + kernel 900 MiB from t=0: 124 MiB usable <= 150 MiB starving line, all run long.
    scenario = parse_scenario(ONE_GUEST + "workload = { kind = 'idle', used_mib = 840 }\n")
    report = run(scenario, Config(), still)
    assert report.starving_guest_s == pytest.approx(60, abs=0.15)
    assert report.guests[0].unrelieved == 1
    assert report.mean_idle_mib == pytest.approx(124, abs=1)


def test_check_demand_says_whether_a_perfect_policy_could_avoid_every_kill() -> None:
    # Room = 4096 - 1024 guard = 3072 MiB; host itself 1024; the guest's kernel + program peak at 60 + 1500.
    grow = "workload = { kind = 'grow', rate_mib_per_s = 100, limit_mib = 1500 }\n"
    fits = check_demand(parse_scenario(ONE_GUEST + grow), 1024)
    assert fits.fits
    assert fits.peak_need_mib == pytest.approx(1024 + 1560, abs=1)
    assert fits.room_mib == 3072
    squeezed = check_demand(
        parse_scenario(ONE_GUEST.replace("other_used_mib = 1024", "other_used_mib = 1600") + grow), 1024
    )
    assert not squeezed.fits
    too_big = check_demand(parse_scenario(ONE_GUEST + grow.replace("1500", "2000")), 1024)
    assert too_big.over_max == ("a",)
    assert not too_big.fits
    cache_only = check_demand(parse_scenario(ONE_GUEST + "cache = { read_mib_per_s = 100, file_mib = 8000 }\n"), 1024)
    assert cache_only.fits  # page cache is reclaimable: it is never demand


def test_host_pressure_counts_in_check_demand() -> None:
    pressure = "[[host.pressure]]\nstart_s = 10\nmib = 2100\nend_s = 20\n"
    assert not check_demand(parse_scenario(ONE_GUEST + pressure), 1024).fits
    assert check_demand(parse_scenario(ONE_GUEST + pressure.replace("2100", "1900")), 1024).fits


def test_a_scenario_sets_a_lying_guests_claims_and_a_readers_counted_cache() -> None:
    text = MINIMAL + (
        "claims = { usable_mib = 0, unused_mib = 7000 }\n"
        "cache = { read_mib_per_s = 30, file_mib = 3072, available_pct = 50 }\n"
    )
    g = build_host(parse_scenario(text, "s.toml")).guests["a"]
    assert (g.claimed_usable_kib, g.claimed_unused_kib) == (0, mib_to_kib(7000))
    assert g.reader is not None and g.reader.available_pct == 50
    plain = build_host(parse_scenario(MINIMAL, "s.toml")).guests["a"]
    assert (plain.claimed_usable_kib, plain.claimed_unused_kib) == (None, None)
