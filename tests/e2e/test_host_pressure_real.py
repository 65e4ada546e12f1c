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
                crossed_s = None
                while time.monotonic() - t_on < 45 and not memcoord.actions:
                    if crossed_s is None and (memory_pressure_some_avg10() or 0.0) > LINE_PCT:
                        crossed_s = time.monotonic() - t_on
                    time.sleep(0.5)
                peak = memory_pressure_some_avg10()
            relief = [a for a in memcoord.actions if a.action == "relieve"]
            log = memcoord.log_text()
        kills = [k.comm for g in lab.guests for k in g.console.state.oom_kills]
    print(f"\nPSI some avg10 crossed {LINE_PCT} % after {crossed_s} s (at {peak} % when relief came); relief {relief}")
    assert crossed_s is not None, "the host process did not raise host PSI above the line"
    assert relief, f"no relief under pressure:\n{log[-3000:]}"
    assert relief[0].t_mono_s - t_on <= crossed_s + 5, (relief[0].t_mono_s - t_on, crossed_s)
    assert "pressure" in relief[0].reason, relief[0].reason
    assert kills == []
