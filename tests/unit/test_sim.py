"""The simulated hypervisor: what the benchmarks' numbers rest on, so its physics are pinned down here."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from memcoord.core.model import Action, Change, mib_to_kib
from memcoord.sim.host import CACHE_FREE_FLOOR_KIB, KERNEL_USED_KIB, SimGuest, SimulatedHypervisor, demo_host
from memcoord.sim.workloads import Burst, FileReader, Hog, HostPressure, Idle, Sawtooth, Trace, TraceError, load_trace

T0_S = 1_000_000.0


def one_guest(
    workload: object, size_mib: int = 512, max_mib: int = 2048, reader: FileReader | None = None, **kw: object
) -> SimulatedHypervisor:
    guest = SimGuest(
        "g", max_kib=mib_to_kib(max_mib), target_kib=mib_to_kib(size_mib), workload=workload, reader=reader
    )
    return SimulatedHypervisor([guest], host_total_kib=mib_to_kib(8192), start_s=T0_S, **kw)


def run_for(hv: SimulatedHypervisor, seconds: float, step_s: float = 0.1) -> None:
    for _ in range(round(seconds / step_s)):
        hv.advance(step_s)


def set_target(hv: SimulatedHypervisor, mib: int) -> None:
    g = hv.guests["g"]
    results = hv.apply([Change("g", Action.GROW, g.target_kib, mib_to_kib(mib), "test")])
    assert all(r.ok for r in results)


def test_balloon_converges_at_its_rate_without_overshoot() -> None:
    hv = one_guest(Idle(), size_mib=2048, balloon_rate_kib_per_s=mib_to_kib(500))
    set_target(hv, 1048)
    hv.advance(1.0)
    assert hv.guests["g"].current_kib == mib_to_kib(1548)
    hv.advance(1.0)
    assert hv.guests["g"].current_kib == mib_to_kib(1048)
    hv.advance(5.0)
    assert hv.guests["g"].current_kib == mib_to_kib(1048)


def test_oom_kill_is_counted_once_and_the_hog_stays_dead() -> None:
    hv = one_guest(Hog(rate_kib_per_s=mib_to_kib(100), start_s=T0_S), size_mib=512)
    for _ in range(100):
        hv.advance(0.1)
    g = hv.guests["g"]
    assert g.oom_kills == 1
    assert g.used_kib == KERNEL_USED_KIB  # the hog's memory is gone with it


def test_shrinking_the_balloon_under_a_workload_kills_it() -> None:
    hv = one_guest(Idle(mib_to_kib(400)), size_mib=1024)
    hv.advance(0.1)
    set_target(hv, 300)
    hv.advance(2.0)
    assert hv.guests["g"].oom_kills == 1


def test_stats_refresh_on_the_period_and_are_stale_in_between() -> None:
    hv = one_guest(Hog(rate_kib_per_s=mib_to_kib(10), start_s=T0_S, limit_kib=mib_to_kib(300)), size_mib=1024)
    assert hv.sample().domains[0].unused_kib is None  # no stats period set yet
    hv.ensure_stats_period(["g"], 5)
    hv.advance(5.0)
    first = hv.sample().domains[0]
    hv.advance(2.0)
    stale = hv.sample().domains[0]
    hv.advance(3.0)
    fresh = hv.sample().domains[0]
    assert first.last_update_s == stale.last_update_s == int(T0_S + 5)
    assert stale.unused_kib == first.unused_kib
    assert fresh.last_update_s == int(T0_S + 10)
    assert fresh.unused_kib == first.unused_kib - mib_to_kib(50)


def test_freed_memory_stays_with_qemu_until_the_balloon_takes_it() -> None:
    hog = Hog(rate_kib_per_s=mib_to_kib(100), start_s=T0_S, limit_kib=mib_to_kib(600), free_s=T0_S + 10)
    hv = one_guest(hog, size_mib=1024)
    for _ in range(80):
        hv.advance(0.1)
    held_kib = hv.guests["g"].rss_kib
    assert held_kib == KERNEL_USED_KIB + mib_to_kib(600)
    for _ in range(30):
        hv.advance(0.1)
    g = hv.guests["g"]
    assert g.used_kib == KERNEL_USED_KIB and g.rss_kib == held_kib
    available_before_kib = hv.host_available_kib()
    set_target(hv, 300)
    hv.advance(5.0)
    assert g.rss_kib == mib_to_kib(300)
    assert hv.host_available_kib() - available_before_kib == held_kib - mib_to_kib(300)


def test_host_available_counts_other_host_memory() -> None:
    hv = one_guest(Idle(), host_other_used_kib=mib_to_kib(1000))
    assert hv.host_available_kib() == mib_to_kib(8192 - 1000) - KERNEL_USED_KIB


def test_sawtooth_ramps_and_drops() -> None:
    saw = Sawtooth(mib_to_kib(100), mib_to_kib(500), period_s=40, start_s=0)
    assert [saw.demand_kib(t) for t in (0, 20, 39.999, 40)] == [
        mib_to_kib(100),
        mib_to_kib(300),
        pytest.approx(mib_to_kib(500), rel=1e-3),
        mib_to_kib(100),
    ]
    saw.killed(50)
    assert saw.demand_kib(70) == mib_to_kib(100)  # dead for the rest of this cycle
    assert saw.demand_kib(100) == mib_to_kib(300)  # back in the next one


def test_bursts_are_deterministic_for_a_seed_and_differ_across_seeds() -> None:
    def shape(seed: int) -> list[int]:
        burst = Burst(0, mib_to_kib(500), every_s=30, length_s=5, jitter=0.5, seed=seed, ramp_s=2)
        return [burst.demand_kib(t / 2) for t in range(0, 1200)]

    assert shape(1) == shape(1)
    assert shape(1) != shape(2)
    assert max(shape(1)) == mib_to_kib(500)
    assert mib_to_kib(250) in shape(1)  # halfway up the ramp


def test_trace_replays_stepwise_and_restarts_after_a_kill() -> None:
    trace = Trace([(0, mib_to_kib(100)), (10, mib_to_kib(300))], start_s=100, restart_after_s=5)
    assert [trace.demand_kib(t) for t in (99, 100, 109, 110, 500)] == [0, *map(mib_to_kib, (100, 100, 300, 300))]
    trace.killed(120)
    assert trace.demand_kib(124) == 0
    assert trace.demand_kib(125) == mib_to_kib(300)


def test_load_trace_reads_csv_with_a_header(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("t_s,demand_mib\n0,100\n5,250.5\n")
    assert load_trace(path) == [(0.0, mib_to_kib(100)), (5.0, mib_to_kib(250.5))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0,100\n5,x\n", "t.csv:2: not numbers"),
        ("0,100,3\n", "t.csv:1: expected 2 columns"),
        ("0,-5\n", "t.csv:1: demand_mib must be >= 0"),
        ("t_s,demand_mib\n", "t.csv: no data rows"),
    ],
)
def test_load_trace_errors_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=expected):
        load_trace(path)


def test_demo_host_keeps_its_public_shape() -> None:
    hv = demo_host()
    hv.ensure_stats_period(list(hv.guests), 1)
    hv.advance(1.0)
    snapshot = hv.sample()
    assert [d.name for d in snapshot.domains] == ["sim-hog", "sim-idle", "sim-busy"]
    assert all(d.unused_kib is not None for d in snapshot.domains)


# -- page cache -------------------------------------------------------------------------------------------


def reader(mib_per_s: float, file_mib: float, start_s: float = T0_S) -> FileReader:
    return FileReader(read_kib_per_s=mib_to_kib(mib_per_s), file_kib=mib_to_kib(file_mib), start_s=start_s)


def test_cache_fills_at_the_read_rate_up_to_the_file_set() -> None:
    hv = one_guest(Idle(mib_to_kib(100)), size_mib=1024, reader=reader(50, 300))
    run_for(hv, 2.0)
    g = hv.guests["g"]
    assert g.cache_kib == pytest.approx(mib_to_kib(100), abs=mib_to_kib(1))
    run_for(hv, 20.0)
    assert g.cache_kib == mib_to_kib(300)  # the whole file set is cached; rereading adds nothing
    assert g.unused_kib == mib_to_kib(1024 - 160 - 300)


def test_cache_fills_free_memory_down_to_the_watermark_only() -> None:
    hv = one_guest(Idle(mib_to_kib(100)), size_mib=1024, reader=reader(200, 4096))
    run_for(hv, 10.0)
    g = hv.guests["g"]
    assert g.unused_kib == CACHE_FREE_FLOOR_KIB
    assert g.cache_kib == mib_to_kib(1024 - 160) - CACHE_FREE_FLOOR_KIB


def test_stats_report_memfree_as_unused_and_memavailable_as_usable() -> None:
    hv = one_guest(Idle(mib_to_kib(100)), size_mib=1024, reader=reader(200, 4096))
    hv.ensure_stats_period(["g"], 1)
    run_for(hv, 10.0)
    dom = hv.sample().domains[0]
    assert dom.unused_kib == CACHE_FREE_FLOOR_KIB  # MemFree: a cache-full guest looks nearly empty
    assert dom.usable_kib == mib_to_kib(1024 - 160)  # MemAvailable: the cache is still there for programs


def test_programs_evict_cache_before_anyone_is_oom_killed() -> None:
    # The cache fills the guest by t=5 s; then the hog takes 700 MiB of the 864 MiB left beside the kernel.
    hog = Hog(rate_kib_per_s=mib_to_kib(100), start_s=T0_S + 5, limit_kib=mib_to_kib(700))
    hv = one_guest(hog, size_mib=1024, reader=reader(400, 4096, start_s=T0_S))
    run_for(hv, 4.0)
    g = hv.guests["g"]
    assert g.cache_kib > mib_to_kib(800)
    run_for(hv, 10.0)
    assert g.oom_kills == 0
    assert g.used_kib == KERNEL_USED_KIB + mib_to_kib(700)
    assert g.cache_kib == mib_to_kib(1024 - 760) - CACHE_FREE_FLOOR_KIB  # refilled what the hog left


def test_demand_beyond_the_guest_kills_even_with_cache_to_drop() -> None:
    hog = Hog(rate_kib_per_s=mib_to_kib(100), start_s=T0_S + 5)
    hv = one_guest(hog, size_mib=1024, reader=reader(400, 4096))
    run_for(hv, 20.0)
    assert hv.guests["g"].oom_kills == 1


def test_balloon_inflation_evicts_cache_and_qemu_gives_those_pages_back() -> None:
    hv = one_guest(Idle(mib_to_kib(100)), size_mib=2048, reader=reader(500, 1500, start_s=T0_S))
    run_for(hv, 5.0)
    g = hv.guests["g"]
    reader_ = g.reader
    assert reader_ is not None
    reader_.stop_s = T0_S + 5  # stop reading, so the cache does not refill behind the balloon
    assert g.cache_kib == mib_to_kib(1500)
    assert g.rss_kib == mib_to_kib(160 + 1500)
    available_before_kib = hv.host_available_kib()
    set_target(hv, 800)
    run_for(hv, 5.0)
    assert g.oom_kills == 0
    assert g.cache_kib == mib_to_kib(800 - 160) - CACHE_FREE_FLOOR_KIB
    assert g.rss_kib == mib_to_kib(800)
    assert hv.host_available_kib() - available_before_kib == mib_to_kib(1660 - 800)


def test_cached_pages_are_backed_by_qemu_and_cost_the_host() -> None:
    hv = one_guest(Idle(), size_mib=2048, reader=reader(100, 1000))
    before_kib = hv.host_available_kib()
    run_for(hv, 5.0)
    g = hv.guests["g"]
    assert g.rss_kib == KERNEL_USED_KIB + g.cache_kib
    assert before_kib - hv.host_available_kib() == pytest.approx(mib_to_kib(500), abs=mib_to_kib(1))


def test_a_reader_not_started_caches_nothing() -> None:
    hv = one_guest(Idle(), size_mib=1024, reader=reader(100, 1000, start_s=T0_S + 60))
    run_for(hv, 10.0)
    assert hv.guests["g"].cache_kib == 0


# -- host pressure ----------------------------------------------------------------------------------------


def test_host_pressure_ramps_holds_and_frees() -> None:
    pressure = HostPressure(used_kib=mib_to_kib(2000), start_s=T0_S + 10, ramp_s=10, end_s=T0_S + 30)
    hv = one_guest(Idle(), host_other_used_kib=mib_to_kib(1000), host_pressure=[pressure])
    base_kib = mib_to_kib(8192 - 1000) - KERNEL_USED_KIB
    seen = {}
    for t_s in (5, 15, 25, 35):
        hv.now_s = T0_S + t_s
        seen[t_s] = base_kib - hv.host_available_kib()
    assert seen == {5: 0, 15: mib_to_kib(1000), 25: mib_to_kib(2000), 35: 0}


def test_host_pressure_moves_host_available_as_time_advances() -> None:
    pressure = HostPressure(used_kib=mib_to_kib(3000), start_s=T0_S + 1)
    hv = one_guest(Idle(), host_pressure=[pressure])
    before_kib = hv.host_available_kib()
    run_for(hv, 2.0)
    assert before_kib - hv.host_available_kib() == mib_to_kib(3000)
    assert hv.sample().host.available_kib == hv.host_available_kib()


def test_burst_ramps_are_drawn_within_their_range_and_are_deterministic() -> None:
    def ramps(seed: int) -> list[float]:
        burst = Burst(0, mib_to_kib(1000), every_s=60, length_s=30, seed=seed, ramp_s=5, ramp_max_s=20)
        burst.demand_kib(600)  # draws every burst up to t=600
        return list(burst._ramps_s)

    assert ramps(3) == ramps(3)
    assert all(5 <= r <= 20 for r in ramps(3))
    assert len(set(ramps(3))) > 1
    burst = Burst(0, mib_to_kib(1000), every_s=60, length_s=30, seed=3, ramp_s=5, ramp_max_s=20)
    first_ramp_s = burst._ramps_s[0]
    assert burst.demand_kib(first_ramp_s / 2) == pytest.approx(mib_to_kib(500), abs=2)
    assert burst.demand_kib(first_ramp_s + 0.01) == mib_to_kib(1000)


def test_burst_times_without_drawn_ramps_follow_the_rng_as_before() -> None:
    plain = Burst(0, mib_to_kib(500), every_s=30, length_s=5, jitter=0.5, seed=9, ramp_s=2)
    plain.demand_kib(200)
    rng = random.Random(9)
    expected = [0.0]
    while expected[-1] <= 200:
        expected.append(expected[-1] + max(30 * (1 + 0.5 * (2 * rng.random() - 1)), 5))
    assert plain._starts_s == expected
    assert set(plain._ramps_s) == {2}


def test_a_reader_whose_memavailable_counts_part_of_its_cache_reports_the_rest_as_used() -> None:
    """cache.available_pct = 50: of 300 MiB cached, 150 MiB is left out of the reported MemAvailable; the truth
    the run judges the guest by (usable_kib) still counts all of it."""
    hv = one_guest(
        Idle(mib_to_kib(100)), size_mib=1024, reader=FileReader(mib_to_kib(50), mib_to_kib(300), T0_S, None, 50)
    )
    hv.ensure_stats_period(["g"], 1)
    run_for(hv, 20.0)
    (d,) = hv.sample().domains
    g = hv.guests["g"]
    assert g.cache_kib == mib_to_kib(300)
    assert g.usable_kib == mib_to_kib(1024 - 160)
    assert d.usable_kib == mib_to_kib(1024 - 160 - 150)
    assert d.unused_kib == g.unused_kib


# -- a lying guest ------------------------------------------------------------------------------------------------
def test_a_lying_guest_reports_its_claims_whatever_it_holds() -> None:
    guest = SimGuest(
        "liar",
        max_kib=mib_to_kib(4096),
        target_kib=mib_to_kib(2048),
        workload=Idle(mib_to_kib(300)),
        claimed_unused_kib=mib_to_kib(7000),
        claimed_usable_kib=0,
    )
    hv = SimulatedHypervisor([guest], host_total_kib=mib_to_kib(8192), start_s=T0_S)
    hv.ensure_stats_period(["liar"], 1)
    run_for(hv, 2.0)
    (d,) = hv.sample().domains
    assert (d.unused_kib, d.usable_kib) == (mib_to_kib(7000), 0)
    assert guest.usable_kib == mib_to_kib(2048 - 360)  # the truth, for the run's starving count
