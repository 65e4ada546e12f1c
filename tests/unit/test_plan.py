"""`memcoord plan`'s pure parts: seeding the simulator from a sample, the policy now and forward, the report.

Snapshots are built by hand the way the libvirt adapter builds them (KiB; `available_kib` is the guest's own
MemTotal, a little below balloon.current).
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from memcoord.admin import tryout
from memcoord.admin.plan import (
    HORIZON_S,
    NO_PERIOD,
    QUIET_S,
    build_report,
    decide_now,
    format_text,
    kernel_reserve_kib,
    sample_with_settings,
    seed_simulator,
    settle,
    to_json,
    with_guest_totals,
)
from memcoord.core.config import Config, parse
from memcoord.core.model import NO_SETTINGS, DomainStats, GuestClass, HostStats, Snapshot, mib_to_kib
from memcoord.core.policy import PolicyState, decide

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


def test_one_sample_alone_shows_no_idle_guest_so_plan_primes_the_policy() -> None:
    """The policy calls a guest seen once busy; plan shows the sample as a steady guest's."""
    snap = snapshot(guest("big", 1536, usable_mib=1200))
    fresh, _ = decide(snap, PolicyState(), CONFIG)
    assert fresh.classes["big"] is GuestClass.BUSY and not fresh.changes
    plan, _ = decide_now(snap, CONFIG)
    assert plan.classes["big"] is GuestClass.WASTEFUL
    (change,) = plan.changes
    assert str(change.action) == "reclaim" and change.to_kib == mib_to_kib(1536 - 100)


def test_a_wasteful_guest_settles_at_its_wasteful_line() -> None:
    """1200 MiB usable, use held: reclaimed 100 MiB a step down to usable = wasteful line (350 MiB)."""
    snap = snapshot(guest("big", 1536, usable_mib=1200))
    plan, state = decide_now(snap, CONFIG)
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
    report = build_report(snap, CONFIG, "test:///", "cfg", {"hog": 1, "idle": 1})
    rows = {r.name: r for r in report.domains}
    hog = rows["hog"]
    assert (hog.guest_class, hog.action) == ("starving", "grow")
    assert hog.to_kib is not None and hog.to_kib > hog.current_kib
    assert hog.settled_kib is not None and hog.settled_kib > hog.current_kib
    assert "starving: 60 MiB usable" in hog.why
    idle = rows["idle"]
    # It pays the idle tax to the grower (2 MiB), once: the grower is fed on the first tick.
    assert (idle.guest_class, idle.action, idle.why) == ("idle", "tax", "idle tax while others grow")
    assert idle.settled_kib == mib_to_kib(1024 - 2) and idle.settles_in_s == 1.0


def test_no_stats_without_a_period_says_memcoord_sets_it() -> None:
    snap = snapshot(guest("new", 1024, usable_mib=None))
    report = build_report(snap, CONFIG, "test:///", "cfg", {"new": 0})
    (row,) = report.domains
    assert row.guest_class == "no-stats" and row.action is None
    assert row.why == NO_PERIOD
    assert (row.settled_kib, row.settles_in_s) == (row.current_kib, 0.0)


def test_stale_stats_with_a_period_are_not_blamed_on_the_period() -> None:
    dom = guest("hung", 1024, usable_mib=500)
    old = DomainStats(**{**{f: getattr(dom, f) for f in dom.__slots__}, "last_update_s": int(T0_S) - 120})
    report = build_report(snapshot(old), CONFIG, "test:///", "cfg", {"hung": 1})
    (row,) = report.domains
    assert row.guest_class == "stale" and "last update 120 s ago" in row.why


def test_unmanaged_and_balloonless_domains_are_listed_and_left_out() -> None:
    config = parse('[libvirt]\ndomains = ["web*"]\n[domains.web2]\nenabled = false\n')
    snap = snapshot(guest("web1", 1536, usable_mib=1200), guest("web2", 1536, 1200), guest("db", 1536, 1200))
    report = build_report(snap, config, "test:///", "cfg", {"web1": 1, "web2": 1, "db": 1, "nobal": None})
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
    report = build_report(snap, CONFIG, "test:///", "cfg", {"hog": 1})
    (row,) = report.domains
    assert row.guest_class == "starving" and row.action is None
    assert "no room to grow" in row.why and "host guard" in row.why
    assert row.settled_kib == row.current_kib


def test_the_horizon_bounds_the_run_and_says_still_moving() -> None:
    snap = snapshot(guest("big", 2048, usable_mib=1900))
    report = build_report(snap, CONFIG, "test:///", "cfg", {"big": 1}, horizon_s=6, quiet_s=60)
    (row,) = report.domains
    assert not report.settled and report.simulated_s == pytest.approx(6)
    assert row.settles_in_s is None
    assert "moving at 6 s" in format_text(report) and "still moving" in format_text(report)


def test_json_keys_are_the_documented_ones() -> None:
    snap = snapshot(guest("web1", 1536, usable_mib=1200), guest("new", 1024, usable_mib=None))
    report = build_report(snap, CONFIG, "qemu:///system", "/etc/memcoord.toml", {"web1": 1, "new": 0, "x": None})
    data = json.loads(json.dumps(to_json(report)))
    domain_keys = {tuple(d) for d in data["domains"]}
    assert len(data["domains"]) == 3 and len(domain_keys) == 1, "every domain has the same keys"
    for key in (*data, *data["host"], *domain_keys.pop()):
        assert re.search(rf"\b{key}\b", tryout.PLAN_EPILOG), f"{key} missing from `memcoord plan --help`"
    assert f"nothing changes for {QUIET_S:.0f} s, at most\n{HORIZON_S / 60:.0f} simulated minutes" in (
        tryout.PLAN_DESCRIPTION
    )
    web1 = next(d for d in data["domains"] if d["name"] == "web1")
    assert web1["action"] == "reclaim" and web1["settled_kib"] < web1["current_kib"] and web1["settles_in_s"] > 0


def test_text_has_a_row_per_domain_with_now_and_settled() -> None:
    snap = snapshot(guest("web1", 1536, usable_mib=1200), guest("new", 1024, usable_mib=None))
    text = format_text(build_report(snap, CONFIG, "qemu:///system", "cfg", {"web1": 1, "new": 0}))
    print(text)
    lines = text.splitlines()
    assert lines[0].startswith("qemu:///system at ") and "guard 1024 MiB" in lines[0]
    assert lines[1].split()[:3] == ["DOMAIN", "MANAGED", "CLASS"]
    web1 = next(line for line in lines if line.startswith("web1 "))
    assert "reclaim -> 1436" in web1 and "after " in web1
    new = next(line for line in lines if line.startswith("new "))
    assert "stays" in new and NO_PERIOD in new


def test_an_idle_guest_stays_and_says_between_which_lines() -> None:
    report = build_report(snapshot(guest("quiet", 1024, usable_mib=300)), CONFIG, "test:///", "cfg", {"quiet": 1})
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
