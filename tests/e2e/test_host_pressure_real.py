"""Host PSI on real parts: a host process creating memory pressure raises the kernel's PSI (/proc/pressure/memory),
and memcoord, with host.pressure_relief_pct set, relieves real idle guests while the host's available memory is
far above its guard (marked `real`; under the lab lock).

The pressure comes from `lab.hosthog.HostPressure`: a hog re-reading an mmap larger than the memory cgroup it is
confined to, which stalls on memory without taking the host's memory. The production profile (no idle reclaim
while the host is above its target) keeps every other reason to lower a guest out of the picture.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lab.coordinator import Memcoord, lab_config
from lab.hosthog import HostPressure
from lab.lab import Lab
from memcoord.core.model import Rule
from memcoord.hypervisor.libvirt import memory_pressure_some_avg10

pytestmark = pytest.mark.real

LINE_PCT = 5.0
CACHE_MIB = 600


def test_host_pressure_starts_relief(lab_prefix: str, guest_image, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    baseline = memory_pressure_some_avg10()
    if baseline is None:
        pytest.fail("this kernel has no /proc/pressure/memory: the test needs PSI (CONFIG_PSI, not psi=0)")
    run_dir.mkdir(parents=True, exist_ok=True)
    with Lab(prefix=lab_prefix, n=2, max_mib=1024, current_mib=1024, image=guest_image, disk_guests=(1, 2)) as lab:
        for i in (1, 2):
            lab.wait_read_done(i, lab.read_disk(i, mib=CACHE_MIB), timeout_s=240)
        guard_mib = 1024
        overrides = {
            "host": {
                "min_available_mib": guard_mib,
                "target_available_mib": guard_mib + 1,
                "pressure_relief_pct": LINE_PCT,
            },
        }
        with Memcoord(lab_config(lab.domain_glob, overrides), run_dir) as memcoord:
            deadline = time.monotonic() + 60
            # Quiet first: the host is far above its guard, so memcoord leaves the guests alone while PSI is low.
            while (memory_pressure_some_avg10() or 0.0) > LINE_PCT / 2:
                assert time.monotonic() < deadline, f"host PSI stays at {memory_pressure_some_avg10()} %"
                time.sleep(1)
            time.sleep(5)
            assert memcoord.actions == [], f"memcoord acted without pressure: {memcoord.actions}"
            with HostPressure(image=guest_image):
                t_on = time.monotonic()
                crossed_s = acted_s = None
                # The kernel updates avg10 every 2 s and memcoord may read the new figure before this loop does:
                # keep reading for 3 s after memcoord acted, so a crossing it saw first is seen here too.
                while time.monotonic() - t_on < 45 and (acted_s is None or time.monotonic() - t_on < acted_s + 3):
                    if crossed_s is None and (memory_pressure_some_avg10() or 0.0) > LINE_PCT:
                        crossed_s = time.monotonic() - t_on
                    if acted_s is None and memcoord.actions:
                        acted_s = time.monotonic() - t_on
                    time.sleep(0.2)
                peak = memory_pressure_some_avg10()
            relief = [a for a in memcoord.actions if a.action == "relieve"]
            log = memcoord.log_text()
        kills = [k.comm for g in lab.guests for k in g.console.state.oom_kills]
    first_s = None if not relief else relief[0].t_mono_s - t_on
    print(f"\nPSI some avg10 crossed {LINE_PCT} % after {crossed_s} s, relief after {first_s} s (PSI {peak} % 3 s"
          f" later); relief {relief}")  # fmt: skip
    assert crossed_s is not None, "the host process did not raise host PSI above the line"
    assert relief, f"no relief under pressure:\n{log[-3000:]}"
    assert first_s is not None and first_s <= crossed_s + 5, (first_s, crossed_s)
    # Far above its guard: the budget is positive, so the pressure, and nothing else, asked for the relief.
    assert relief[0].reason.startswith("host under memory pressure"), relief[0].reason
    assert kills == []


# A hog in a 768 MiB guest (its maximum 2 GiB) allocates 900 MiB at 400 us a page (10 MiB/s) and holds it 10 s.
RAMP_START_MIB = 768
RAMP_MIB = 900
RAMP_PAGE_US = 400


def test_under_host_pressure_a_ramping_guest_is_lent_what_it_lacks(  # type: ignore[no-untyped-def]
    lab_prefix: str, guest_image, run_dir: Path
) -> None:
    """Under host pressure nobody grows, but a guest about to run out of memory is lent what it lacks from the
    host's room: PSI can be high with GiBs above the guard (here a host process thrashing in its own cgroup), and
    a guest whose program ramped was left to be OOM-killed. The hog allocates past the guest's size and ends with
    no OOM kill."""
    if memory_pressure_some_avg10() is None:
        pytest.fail("this kernel has no /proc/pressure/memory: the test needs PSI (CONFIG_PSI, not psi=0)")
    run_dir.mkdir(parents=True, exist_ok=True)
    with Lab(prefix=lab_prefix, n=1, max_mib=2048, current_mib=RAMP_START_MIB, image=guest_image) as lab:
        overrides = {
            "host": {"min_available_mib": 1024, "target_available_mib": 1025, "pressure_relief_pct": LINE_PCT},
        }
        console = lab.guest(1).console
        with Memcoord(lab_config(lab.domain_glob, overrides), run_dir) as memcoord, HostPressure(image=guest_image):
            deadline = time.monotonic() + 45
            while (memory_pressure_some_avg10() or 0.0) <= LINE_PCT:
                assert time.monotonic() < deadline, f"host PSI stays at {memory_pressure_some_avg10()} %"
                time.sleep(0.5)
            lab.start_hog(1, "hold", size_mib=RAMP_MIB, hold_s=10, page_us=RAMP_PAGE_US)
            deadline = time.monotonic() + RAMP_MIB / 10 * 3 + 60
            while console.state.hog_state not in ("exited", "killed"):
                assert time.monotonic() < deadline, f"the hog is still {console.state.hog_state}"
                time.sleep(0.5)
            pressured = memory_pressure_some_avg10()
            grows = [a for a in memcoord.actions if a.action == "grow"]
            log = memcoord.log_text()
        kills = [k.comm for k in console.state.oom_kills]
    print(f"\nPSI at the hog's end {pressured} %; grows {grows}")
    assert kills == [], f"OOM kills {kills}; grows {grows}\n{log[-3000:]}"
    assert console.state.hog_peak_mib >= RAMP_MIB, console.state.hog_peak_mib
    assert grows and all(a.rule is Rule.LENT for a in grows), grows
