"""Settings that travel with the VM, on real QEMU guests with the real `memcoord run`.

Two guests start at 1024 MiB (of 2048). The admin sets memcoord metadata on them with `virsh metadata --live
--config`, as on any host: the idle guest gets min_mib = 800 (without it memcoord takes it down to about 450,
where its free memory meets the wasteful line), the hog's guest max_mib = 1400 and a broken min_mib. Then:

1. the idle guest is reclaimed to 800 and no lower; the hog's guest is grown to 1400 and no higher, until its
   hog is OOM killed there; the broken key is logged once, naming the domain, the element and the value;
2. the idle guest's metadata is changed to min_mib = 600 while memcoord runs: it follows within seconds (an
   event, not the five-minute refresh), with no restart;
3. a config reload with `[domains."<idle>"] min_mib = 900` beats the metadata: the guest is raised to 900; a
   table with a typo in its name is warned about;

and `memcoord status --json` names the source of each floor and ceiling at every step. The numbers are
libvirt's balloon sizes from the lab's recorder, printed before the assertions.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab import analysis
from lab.coordinator import memcoord_command
from lab.image import GuestImage
from lab.session import LabRun
from memcoord.hypervisor.domain_settings import NAMESPACE
from tests.helpers.realguest import hog_state, retry_once_on_outage

pytestmark = pytest.mark.real

MAX_MIB = 2048
START_MIB = 1024
IDLE_FLOOR_MIB = 800
IDLE_FLOOR_CHANGED_MIB = 600
CONFIG_FLOOR_MIB = 900
HOG_CEILING_MIB = 1400
GROWER_PAGE_US = 160  # 25 MiB/s
# libvirt's balloon.current settles within a MiB or two of a target.
BALLOON_SLACK_MIB = 4


def _set_metadata(domain: str, body: str) -> None:
    """What an admin types; --live --config: the running guest and its persistent definition."""
    virsh = ["virsh", "-c", "qemu:///system", "metadata", domain, NAMESPACE, "--key", "memcoord"]
    subprocess.run(
        [*virsh, "--set", f"<settings>{body}</settings>", "--live", "--config"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _status(state_path: Path) -> dict[str, dict[str, Any]]:
    proc = subprocess.run(
        [*memcoord_command(), "status", "--json", "--state", str(state_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return {d["name"]: d for d in json.loads(proc.stdout)["domains"]}


def _bounds(domain: dict[str, Any]) -> tuple[float, str, float, str]:
    return (
        domain["floor_kib"] / 1024,
        domain["floor_source"],
        domain["ceiling_kib"] / 1024,
        domain["ceiling_source"],
    )


def _settled(run: LabRun, guest: str, target_mib: float, hold_s: float = 6.0) -> bool:
    """At target (within the slack) for the last hold_s seconds of the recorder's samples."""
    now_s = run.t_s()
    recent = [v for t, v in run.timeline.series(guest, "current_mib") if t >= now_s - hold_s]
    return len(recent) >= hold_s - 2 and all(abs(v - target_mib) <= BALLOON_SLACK_MIB for v in recent)


def test_metadata_floor_ceiling_live_change_and_config_override(
    guest_image: GuestImage, lab_prefix: str, run_dir: Path
) -> None:
    def scenario(attempt_dir: Path) -> None:
        with LabRun(
            lab_prefix,
            attempt_dir,
            n=2,
            max_mib=MAX_MIB,
            current_mib=START_MIB,
            image=guest_image,
            title="settings from the VM's metadata",
        ) as run:
            idle, hog = run.lab.names
            state_path = attempt_dir / "state.json"
            status_cfg = {"status": {"path": str(state_path)}}
            _set_metadata(idle, f"<min_mib>{IDLE_FLOOR_MIB}</min_mib>")
            _set_metadata(hog, f"<max_mib>{HOG_CEILING_MIB}</max_mib>")
            memcoord = run.start_memcoord(status_cfg)

            # 1. metadata floor and ceiling
            t1_s = run.t_s()
            run.lab.start_hog(2, "grow", page_us=GROWER_PAGE_US)
            run.wait_until(lambda: _settled(run, idle, IDLE_FLOOR_MIB), 90, f"{idle} at its metadata floor")
            run.wait_until(lambda: hog_state(run, 2) == "killed", 150, "the hog OOM killed at its ceiling")
            status1 = _status(state_path)
            t2_s = run.t_s()

            # 2. the metadata changes while memcoord runs; a key that cannot be believed puts the guest out of
            # memcoord's hands (a misspelt enabled = false must not leave it managed)
            _set_metadata(idle, f"<min_mib>{IDLE_FLOOR_CHANGED_MIB}</min_mib>")
            _set_metadata(hog, f"<max_mib>{HOG_CEILING_MIB}</max_mib><min_mib>abc</min_mib>")
            run.mark("metadata", idle, min_mib=IDLE_FLOOR_CHANGED_MIB)
            followed_s = run.wait_until(
                lambda: _settled(run, idle, IDLE_FLOOR_CHANGED_MIB, hold_s=3), 60, f"{idle} at its new floor"
            )
            time.sleep(5)  # and it stays there
            status2 = _status(state_path)
            t3_s = run.t_s()

            # 3. a config override beats the metadata
            run.reload_memcoord(
                {**status_cfg, "domains": {idle: {"min_mib": CONFIG_FLOOR_MIB}, f"{idle}x": {"enabled": False}}}
            )
            raised_s = run.wait_until(lambda: _settled(run, idle, CONFIG_FLOOR_MIB, hold_s=3), 30, f"{idle} at 900")
            status3 = _status(state_path)
            t_end_s = run.t_s()
            log_text = memcoord.log_text()
        tl = run.timeline
        idle_low1 = analysis.minimum(tl, idle, "current_mib", t1_s, t2_s)
        hog_peak = analysis.peak(tl, hog, "current_mib", t1_s, t2_s)
        idle_low2 = analysis.minimum(tl, idle, "current_mib", t2_s, t3_s)
        idle_end = analysis.value_at(tl, idle, "current_mib", t_end_s)
        bad_key_warnings = [line for line in log_text.splitlines() if "'abc'" in line]
        typo_warnings = [line for line in log_text.splitlines() if f'[domains."{idle}x"]' in line]
        print(
            f"\n1. {idle} (metadata min_mib {IDLE_FLOOR_MIB}): {START_MIB} -> lowest {idle_low1:.0f} MiB;"
            f" {hog} (metadata max_mib {HOG_CEILING_MIB}): peak {hog_peak:.0f} MiB until its hog was OOM killed;"
            f" status: {idle} {_bounds(status1[idle])}, {hog} {_bounds(status1[hog])}"
            f"\n   bad metadata warnings: {bad_key_warnings}"
            f"\n2. metadata min_mib -> {IDLE_FLOOR_CHANGED_MIB} live: {idle} there after {followed_s:.1f} s,"
            f" lowest {idle_low2:.0f} MiB; status {_bounds(status2[idle])}"
            f"\n3. config min_mib {CONFIG_FLOOR_MIB} over metadata {IDLE_FLOOR_CHANGED_MIB}: {idle} at"
            f" {idle_end:.0f} MiB after {raised_s:.1f} s; status {_bounds(status3[idle])}"
            f"\n   typo warnings: {typo_warnings}"
        )
        assert idle_low1 >= IDLE_FLOOR_MIB - BALLOON_SLACK_MIB
        assert HOG_CEILING_MIB - 50 <= hog_peak <= HOG_CEILING_MIB + BALLOON_SLACK_MIB
        assert _bounds(status1[idle]) == (IDLE_FLOOR_MIB, "metadata", MAX_MIB, "libvirt_max")
        assert _bounds(status1[hog]) == (256, "default", HOG_CEILING_MIB, "metadata")
        # The broken min_mib: the guest is left alone, the valid max_mib still shown.
        assert status2[hog]["managed"] is False and status2[hog]["excluded_by"] == "bad-metadata", status2[hog]
        assert status2[hog]["metadata"] == {"max_mib": HOG_CEILING_MIB}
        assert len(bad_key_warnings) == 1 and hog in bad_key_warnings[0] and "<min_mib>" in bad_key_warnings[0]
        assert idle_low2 >= IDLE_FLOOR_CHANGED_MIB - BALLOON_SLACK_MIB
        assert followed_s < 30  # an event, not the five-minute refresh
        assert _bounds(status2[idle]) == (IDLE_FLOOR_CHANGED_MIB, "metadata", MAX_MIB, "libvirt_max")
        assert abs(idle_end - CONFIG_FLOOR_MIB) <= BALLOON_SLACK_MIB
        assert _bounds(status3[idle]) == (CONFIG_FLOOR_MIB, "config", MAX_MIB, "libvirt_max")
        assert len(typo_warnings) == 1 and "no running or defined domain" in typo_warnings[0]

    retry_once_on_outage(scenario, run_dir)
