"""`memcoord plan`'s pure parts: seeding the simulator from a sample, the policy now and forward, the report.

Snapshots are built by hand the way the libvirt adapter builds them (KiB; `available_kib` is the guest's own
MemTotal, a little below balloon.current).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any

import pytest

from memcoord.admin import tryout
from memcoord.admin.plan import (
    HORIZON_S,
    NO_PERIOD,
    QUIET_S,
    PlanReport,
    build_report,
    decide_now,
    format_text,
    fresh_samples,
    kernel_reserve_kib,
    needs_period,
    sample_with_settings,
    seed_simulator,
    settle,
    to_json,
    unusable_why,
    with_guest_totals,
)
from memcoord.core.config import Config, parse
from memcoord.core.model import (
    NO_SETTINGS,
    DomainSettings,
    DomainStats,
    GuestClass,
    HostStats,
    Snapshot,
    Unballoonable,
    mib_to_kib,
)
from memcoord.core.policy import PolicyState, decide
from memcoord.sim.host import SimGuest, SimulatedHypervisor

T0_S = 1_800_000_000.0
KERNEL_RESERVE_MIB = 50


def guest(
    name: str,
    current_mib: int,
    usable_mib: int | None,
    max_mib: int = 2048,
    unused_mib: int | None = None,
    rss_mib: int | None = None,
) -> DomainStats:
    """A guest reporting fresh stats (last update one second before the sample)."""
    has_stats = usable_mib is not None
    return DomainStats(
        name=name,
        current_kib=mib_to_kib(current_mib),
        max_kib=mib_to_kib(max_mib),
        unused_kib=mib_to_kib(unused_mib if unused_mib is not None else usable_mib) if has_stats else None,
        usable_kib=mib_to_kib(usable_mib) if has_stats else None,
        available_kib=mib_to_kib(current_mib - KERNEL_RESERVE_MIB) if has_stats else None,
        rss_kib=mib_to_kib(rss_mib if rss_mib is not None else current_mib),
        last_update_s=int(T0_S) - 1 if has_stats else None,
    )


def snapshot(*domains: DomainStats, available_mib: int = 16_000, total_mib: int = 32_000) -> Snapshot:
    return Snapshot(HostStats(mib_to_kib(available_mib), mib_to_kib(total_mib)), tuple(domains), T0_S)


CONFIG = Config()


def earlier(snap: Snapshot, config: Config = CONFIG) -> Snapshot:
    """The same figures one stats period and one tick earlier: what a guest whose use holds steady reported."""
    period_s = config.loop.stats_period_s
    domains = tuple(
        dataclasses.replace(d, last_update_s=d.last_update_s - period_s) if d.last_update_s else d for d in snap.domains
    )
    return dataclasses.replace(snap, domains=domains, taken_at_s=snap.taken_at_s - period_s)


def report_of(snap: Snapshot, config: Config = CONFIG, **kwargs: Any) -> PlanReport:
    """The plan of a guest (or guests) whose use held steady over two samples, the later one snap."""
    periods = kwargs.pop("periods", {d.name: 1 for d in snap.domains})
    return build_report(earlier(snap, config), snap, config, "test:///", "cfg", periods, **kwargs)


def test_seeded_simulator_reports_the_sample_and_holds_it() -> None:
    """The simulated host starts where the real one is, and with nothing done to it stays there."""
    dom = guest("web", 1024, usable_mib=700, unused_mib=300, rss_mib=800)
    snap = snapshot(dom, available_mib=10_000)
    hv = seed_simulator(snap, ["web"], {"web": True})
    hv.ensure_stats_period(["web"], 1)
    reserve = kernel_reserve_kib(snap)
    for _ in range(3):
        seen = with_guest_totals(hv.sample(), reserve)
        (sim,) = seen.domains
        assert (sim.current_kib, sim.max_kib, sim.rss_kib) == (dom.current_kib, dom.max_kib, dom.rss_kib)
        assert (sim.unused_kib, sim.usable_kib, sim.available_kib) == (
            dom.unused_kib,
            dom.usable_kib,
            dom.available_kib,
        )
        assert seen.host.available_kib == snap.host.available_kib
        hv.advance(1.0)


def test_one_sample_alone_shows_no_idle_guest_so_plan_decides_on_two() -> None:
    """The policy calls a guest seen once busy; plan decides on the second of two samples."""
    snap = snapshot(guest("big", 1536, usable_mib=1200))
    fresh, _ = decide(snap, PolicyState(), CONFIG)
    assert fresh.classes["big"] is GuestClass.BUSY and not fresh.changes
    plan, _ = decide_now(earlier(snap), snap, CONFIG)
    assert plan.classes["big"] is GuestClass.WASTEFUL
    (change,) = plan.changes
    assert str(change.action) == "reclaim" and change.to_kib == mib_to_kib(1536 - 100)


def test_a_wasteful_guest_settles_at_its_wasteful_line() -> None:
    """1200 MiB usable, use held: reclaimed 100 MiB a step down to usable = wasteful line (350 MiB)."""
    snap = snapshot(guest("big", 1536, usable_mib=1200))
    plan, state = decide_now(earlier(snap), snap, CONFIG)
    result = settle(snap, CONFIG, plan, state)
    used_mib = 1536 - 1200
    settled_mib = result.target_kib["big"] / 1024
    print(f"settled at {settled_mib:.0f} MiB after {result.last_change_s['big']:.0f} s; sim {result.simulated_s} s")
    assert result.settled
    assert used_mib + 350 <= settled_mib < used_mib + 350 + 100
    # 850 MiB in 100 MiB steps, each waiting for the balloon to land and a new sample after it.
    assert 8 <= result.last_change_s["big"] < result.at_rest_s["big"] <= 60
    assert not result.oom_kills


def test_a_starving_guest_grows_now_and_settles_higher() -> None:
    snap = snapshot(guest("hog", 1024, usable_mib=60), guest("idle", 1024, usable_mib=300))
    report = report_of(snap, periods={"hog": 1, "idle": 1})
    rows = {r.name: r for r in report.domains}
    hog = rows["hog"]
    assert (hog.guest_class, hog.action) == ("starving", "grow")
    assert hog.to_kib is not None and hog.to_kib > hog.current_kib
    assert hog.settled_kib is not None and hog.settled_kib > hog.current_kib
    assert "below its low (60 MiB usable" in hog.why
    idle = rows["idle"]
    # The host feeds the grower: no idle tax is taken (it is only for a guest the host cannot lift).
    assert (idle.guest_class, idle.action) == ("idle", None)
    assert idle.why.startswith("idle: 300 MiB usable")
    assert idle.settled_kib == mib_to_kib(1024) and idle.settles_in_s == 0.0


def test_no_stats_without_a_period_says_so() -> None:
    snap = snapshot(guest("new", 1024, usable_mib=None))
    (row,) = report_of(snap, periods={"new": 0}, period_off=["new"]).domains
    assert row.guest_class == "no-stats" and row.action is None
    assert row.why == f"left alone: {NO_PERIOD}"
    assert (row.settled_kib, row.settles_in_s) == (row.current_kib, 0.0)
    (row,) = report_of(snap, periods={"new": 1}, period_set=["new"]).domains
    assert (
        row.why == "left alone: it reports no balloon figures (no balloon driver loaded?), even after plan set its"
        " stats period"
    )


def _aged(dom: DomainStats, age_s: int) -> DomainStats:
    return dataclasses.replace(dom, last_update_s=int(T0_S) - age_s)


def test_old_stats_are_not_decided_on() -> None:
    """A guest with 1200 MiB usable is wasteful if the figure is fresh; 120 s old, it is not a figure."""
    old = _aged(guest("hung", 1536, usable_mib=1200), 120)
    (row,) = build_report(snapshot(old), snapshot(old), CONFIG, "test:///", "cfg", {"hung": 1}).domains
    assert (row.guest_class, row.action, row.usable_kib, row.stats_age_s) == ("no-stats", None, None, None)
    assert row.why == "left alone: its latest stats are 120 s old (trusted up to 5 s)"
    # Within the daemon's limit (3 periods + 2 ticks) it is decided on, its age shown.
    recent = _aged(guest("hung", 1536, usable_mib=1200), 5)
    (row,) = report_of(snapshot(recent)).domains
    assert (row.action, row.stats_age_s) == ("reclaim", 5.0)


def test_a_report_from_boot_is_impossible_and_not_decided_on() -> None:
    """The issue's case: a 2048 MiB guest started at 1024 MiB, no stats period; its one report was sent at boot,
    with the balloon still at 2048 MiB: MemTotal 1990 MiB, 1860 MiB usable. Fresh or not, it cannot be true."""
    boot = dataclasses.replace(
        guest("g", 1024, usable_mib=1860), available_kib=mib_to_kib(1990), unused_kib=mib_to_kib(1800)
    )
    assert unusable_why(boot, T0_S, CONFIG) == (
        "its latest stats cannot be true: its total (MemTotal) 1990 MiB is more than its balloon's 1024 MiB"
    )
    (row,) = report_of(snapshot(boot)).domains
    assert (row.guest_class, row.action, row.usable_kib) == ("no-stats", None, None)
    assert row.settled_kib == row.current_kib and "cannot be true" in row.why
    # Each impossible figure on its own, and a possible report.
    usable_high = dataclasses.replace(guest("g", 1024, usable_mib=1100), available_kib=None)
    assert "usable (MemAvailable) 1100 MiB is more than its balloon's 1024 MiB" in str(
        unusable_why(usable_high, T0_S, CONFIG)
    )
    free_high = dataclasses.replace(guest("g", 1024, usable_mib=900), unused_kib=mib_to_kib(990))
    assert "unused (MemFree) 990 MiB is more than its total (MemTotal) 974 MiB" in str(
        unusable_why(free_high, T0_S, CONFIG)
    )
    assert unusable_why(guest("g", 1024, usable_mib=900), T0_S, CONFIG) is None


def test_plan_sets_the_period_where_it_is_off_or_the_stats_unusable() -> None:
    snap = snapshot(
        guest("on", 1024, usable_mib=500),
        guest("off", 1024, usable_mib=500),
        guest("unknown-old", 1024, usable_mib=500, max_mib=2048),
        guest("unknown-fresh", 1024, usable_mib=500),
    )
    snap = dataclasses.replace(snap, domains=(*snap.domains[:2], _aged(snap.domains[2], 3600), snap.domains[3]))
    config = parse('[libvirt]\ndomains = ["o*", "u*"]\n')
    periods = {"on": 1, "off": 0}
    assert needs_period(snap, config, periods) == ["off", "unknown-old"]


def test_fresh_samples_wait_for_two_new_reports_of_every_guest() -> None:
    """The simulated host in real time, its guests without a stats period (as libvirt's are by default)."""
    hv = SimulatedHypervisor(
        [SimGuest("a", mib_to_kib(2048), mib_to_kib(1024)), SimGuest("b", mib_to_kib(2048), mib_to_kib(1024))],
        host_total_kib=mib_to_kib(8192),
        realtime=True,
    )
    first = hv.sample()
    assert needs_period(first, CONFIG, {}) == ["a", "b"]
    hv.ensure_stats_period(["a", "b"], 1)
    started_s = time.monotonic()
    first, second = fresh_samples(hv, CONFIG, {"a", "b"}, first, wait_s=10)
    took_s = time.monotonic() - started_s
    for a, b in zip(first.domains, second.domains, strict=True):
        assert unusable_why(a, first.taken_at_s, CONFIG) is None and unusable_why(b, second.taken_at_s, CONFIG) is None
        assert b.last_update_s is not None and a.last_update_s is not None and b.last_update_s > a.last_update_s
    print(f"two fresh samples after {took_s:.1f} s")
    assert took_s < 4
    # A guest that never reports: what there is when the wait runs out.
    hv.guests["b"].has_balloon_stats = False
    hv.guests["b"].last_update_s = 0
    started_s = time.monotonic()
    first, second = fresh_samples(hv, CONFIG, {"a", "b"}, hv.sample(), wait_s=2)
    assert 2 <= time.monotonic() - started_s < 3
    assert second.taken_at_s > first.taken_at_s


def test_unmanaged_and_balloonless_domains_are_listed_and_left_out() -> None:
    config = parse('[libvirt]\ndomains = ["web*"]\n[domains.web2]\nenabled = false\n')
    snap = snapshot(guest("web1", 1536, usable_mib=1200), guest("web2", 1536, 1200), guest("db", 1536, 1200))
    report = report_of(snap, config, periods={"web1": 1, "web2": 1, "db": 1, "nobal": None})
    rows = {r.name: r for r in report.domains}
    assert rows["web1"].managed and rows["web1"].action == "reclaim"
    assert not rows["db"].managed and "libvirt.domains (web*) does not match it" in rows["db"].why
    assert not rows["web2"].managed and "enabled = false" in rows["web2"].why
    for name in ("db", "web2"):
        assert (rows[name].guest_class, rows[name].settled_kib, rows[name].action) == (None, None, None)
    assert rows["nobal"].guest_class == "no-balloon" and rows["nobal"].current_kib is None


def test_the_host_guard_holds_growth_in_the_plan_too() -> None:
    """Host at its guard: the starving guest is not grown now, and the row says why."""
    snap = snapshot(guest("hog", 1024, usable_mib=60), available_mib=1024)
    report = report_of(snap, periods={"hog": 1})
    (row,) = report.domains
    assert row.guest_class == "starving" and row.action is None
    assert "no room to grow" in row.why and "host guard" in row.why
    assert row.settled_kib == row.current_kib


def test_the_horizon_bounds_the_run_and_says_still_moving() -> None:
    snap = snapshot(guest("big", 2048, usable_mib=1900))
    report = report_of(snap, horizon_s=6, quiet_s=60)
    (row,) = report.domains
    assert not report.settled and report.simulated_s == pytest.approx(6)
    assert row.settles_in_s is None
    assert "moving at 6 s" in format_text(report) and "still moving" in format_text(report)


def test_json_keys_are_the_documented_ones() -> None:
    snap = snapshot(guest("web1", 1536, usable_mib=1200), guest("new", 1024, usable_mib=None))
    report = build_report(
        earlier(snap), snap, CONFIG, "qemu:///system", "/etc/memcoord.toml", {"web1": 1, "new": 0, "x": None}
    )
    data = json.loads(json.dumps(to_json(report)))
    domain_keys = {tuple(d) for d in data["domains"]}
    assert len(data["domains"]) == 3 and len(domain_keys) == 1, "every domain has the same keys"
    for key in (*data, *data["host"], *domain_keys.pop()):
        assert re.search(rf"\b{key}\b", tryout.PLAN_EPILOG), f"{key} missing from `memcoord plan --help`"
    assert f"nothing\nchanges for {QUIET_S:.0f} s, at most {HORIZON_S / 60:.0f} simulated minutes" in (
        tryout.PLAN_DESCRIPTION
    )
    web1 = next(d for d in data["domains"] if d["name"] == "web1")
    assert web1["action"] == "reclaim" and web1["settled_kib"] < web1["current_kib"] and web1["settles_in_s"] > 0


def test_text_has_a_row_per_domain_with_now_and_settled() -> None:
    snap = snapshot(guest("web1", 1536, usable_mib=1200), guest("new", 1024, usable_mib=None))
    text = format_text(
        build_report(earlier(snap), snap, CONFIG, "qemu:///system", "cfg", {"web1": 1, "new": 0}, period_off=["new"])
    )
    print(text)
    lines = text.splitlines()
    assert lines[0].startswith("qemu:///system at ") and "guard 1024 MiB" in lines[0]
    assert lines[1].startswith("profile density: idle guests give back what they hold above their wasteful line")
    assert '[host] profile = "production" would reclaim them only below 6400 MiB available' in lines[1]
    assert lines[2].split()[:3] == ["DOMAIN", "MANAGED", "CLASS"]
    web1 = next(line for line in lines if line.startswith("web1 "))
    assert "reclaim -> 1436" in web1 and "after " in web1
    new = next(line for line in lines if line.startswith("new "))
    assert "stays" in new and NO_PERIOD in new


def test_an_idle_guest_stays_and_says_between_which_lines() -> None:
    report = report_of(snapshot(guest("quiet", 1024, usable_mib=300)), periods={"quiet": 1})
    (row,) = report.domains
    assert (row.guest_class, row.action, row.settled_kib, row.settles_in_s) == ("idle", None, row.current_kib, 0.0)
    assert row.why == "idle: 300 MiB usable, between its starving (150 MiB) and wasteful (350 MiB) lines"


class _SettingsArriveLate:
    """A hypervisor whose adapter has read a domain's libvirt metadata only from its third sample on."""

    def __init__(self, read_from_sample: int) -> None:
        self.samples = 0
        self.read_from_sample = read_from_sample

    def sample(self, deadline_s: float | None = None) -> Snapshot:
        self.samples += 1
        settings = NO_SETTINGS if self.samples >= self.read_from_sample else None
        return snapshot(dataclasses.replace(guest("web", 1024, usable_mib=700), settings=settings))


def test_one_shot_commands_sample_until_every_domains_settings_are_read() -> None:
    hv = _SettingsArriveLate(read_from_sample=3)
    snap = sample_with_settings(hv, wait_s=10)
    assert hv.samples == 3 and snap.domains[0].settings is NO_SETTINGS


def test_one_shot_commands_give_up_waiting_for_settings_and_leave_the_guest_alone() -> None:
    hv = _SettingsArriveLate(read_from_sample=1_000)
    snap = sample_with_settings(hv, wait_s=0.5)
    assert snap.domains[0].settings is None and 2 <= hv.samples < 1_000
    assert not CONFIG.manages("web", snap.domains[0].settings)


def test_a_guest_ballooning_cannot_help_is_shown_with_the_reason_and_left_alone() -> None:
    locked = dataclasses.replace(
        guest("db", 4096, usable_mib=3000, max_mib=4096), settings=DomainSettings(unballoonable=Unballoonable.LOCKED)
    )
    (row,) = report_of(snapshot(locked)).domains
    assert (row.managed, row.guest_class, row.action, row.settled_kib) == (False, None, None, None)
    assert row.why == f"not managed, ballooning cannot help: {Unballoonable.LOCKED.why}"


def test_the_header_says_which_profile_is_in_force_and_plan_decides_with_it() -> None:
    """production on a 32000 MiB host: the comfort target is 20 % of it (6400 MiB); with 16000 MiB available the
    wasteful guest keeps its memory, where the density profile reclaims it."""
    snap = snapshot(guest("web1", 1536, usable_mib=1200))
    production = parse('[host]\nprofile = "production"\n')
    report = report_of(snap, production)
    (row,) = report.domains
    assert (row.guest_class, row.action) == ("wasteful", None)
    assert (report.profile, report.target_available_kib) == ("production", mib_to_kib(6400))
    assert report.profile_text.startswith(
        "profile production: idle guests give memory back only while the host has less than 6400 MiB available or "
        'a guest starves, never below what they used in the last 600 s; [host] profile = "density"'
    )
    # Below the target, it reclaims again.
    short = report_of(snapshot(guest("web1", 1536, usable_mib=1200), available_mib=6000), production)
    assert short.domains[0].action == "reclaim"
    assert report_of(snap).domains[0].action == "reclaim" and report_of(snap).target_available_kib == 0
