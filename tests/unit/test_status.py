"""`memcoord status` and the state file behind it: what the daemon publishes agrees with the hypervisor."""

from __future__ import annotations

import grp
import json
import os
import stat
from pathlib import Path

import pytest

from memcoord.admin import status
from memcoord.core.config import Config, ConfigError, parse
from memcoord.daemon import state
from memcoord.daemon.observe import Observer
from memcoord.daemon.service import Service
from memcoord.sim.host import demo_host
from tests.helpers.daemon import SIM_GUESTS


def _service(tmp_path: Path, extra: str = "") -> tuple[Service, object]:
    sim = demo_host()
    cfg_path = tmp_path / "memcoord.toml"
    cfg_path.write_text(f'[status]\npath = "{tmp_path / "state.json"}"\n{extra}')
    config = parse(cfg_path.read_text(), cfg_path)
    return Service(cfg_path, config, lambda _uri: sim, observer=Observer()), sim


def test_state_file_agrees_with_the_hypervisor_every_tick(tmp_path: Path):
    service, sim = _service(tmp_path)
    targets_checked = 0
    for _ in range(30):
        sim.advance(1.0)
        assert service.tick()
        published = json.loads((tmp_path / "state.json").read_text())
        seen = sim.sample()  # the sim does not move between two samples unless advanced
        assert {d["name"] for d in published["domains"]} == {d.name for d in seen.domains}
        by_name = {d["name"]: d for d in published["domains"]}
        for d in seen.domains:
            assert by_name[d.name]["current_kib"] == d.current_kib
            assert by_name[d.name]["max_kib"] == d.max_kib
            assert by_name[d.name]["unused_kib"] == d.unused_kib
            assert by_name[d.name]["usable_kib"] == d.usable_kib
            # The target is what memcoord last set, i.e. the sim's balloon target.
            if by_name[d.name]["target_kib"] is not None:
                assert by_name[d.name]["target_kib"] == sim.guests[d.name].target_kib
                targets_checked += 1
        assert published["host"]["available_kib"] == seen.host.available_kib
        assert published["host"]["guard_kib"] == 1024 * 1024
    assert published["ticks"] == 30
    assert targets_checked > 0, "no guest ever had a target: the target check above never ran"
    # The demo's idle guest is reclaimed in this time: its last action and reason are published.
    idle = by_name["sim-idle"]
    # (Reclaimed while wasteful, then taxed once idle while the hog's guest grows: either way, with its reason.)
    expected_reason = {"reclaim": "idle above its high", "tax": "idle tax"}[idle["last_action"]["action"]]
    assert expected_reason in idle["last_action"]["reason"]
    assert idle["class"] in {"idle", "wasteful"}


def test_state_file_is_0640_written_atomically_and_owned_by_the_group(tmp_path: Path):
    group = grp.getgrgid(os.getgid() + 1 if os.getgid() == 0 else os.getgid()).gr_name
    service, sim = _service(tmp_path, f'group = "{group}"\n')
    sim.advance(1.0)
    service.tick()
    st = (tmp_path / "state.json").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == grp.getgrnam(group).gr_gid
    # Only the state file is left: the temporary file was renamed over it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memcoord.toml", "state.json"]


def test_an_unknown_group_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"status.group = 'no-such-group-x': no such group"):
        parse('[status]\ngroup = "no-such-group-x"\n', "memcoord.toml")


def test_old_config_files_still_load_with_observability_off():
    config = parse('[libvirt]\nuri = "qemu:///system"\n')
    assert config.status.path == "/run/memcoord/state.json" and config.status.group == ""
    assert not config.metrics.enabled and config.metrics.address == "127.0.0.1" and config.metrics.port == 9749
    assert config.timeline.path == ""
    assert config == Config()


def test_a_guests_refused_stats_are_published_with_the_reason(tmp_path: Path):
    service, sim = _service(tmp_path)
    liar = sim.guests["sim-idle"]
    liar.claimed_unused_kib = liar.max_kib + 1024 * 1024  # more free memory than it can have
    for _ in range(3):
        sim.advance(1.0)
        assert service.tick()
    view = json.loads((tmp_path / "state.json").read_text())
    by_name = {d["name"]: d for d in view["domains"]}
    assert by_name["sim-idle"]["class"] == "bad-stats"
    assert "is more than its total" in by_name["sim-idle"]["refused"]
    assert all(d["refused"] is None for n, d in by_name.items() if n != "sim-idle")
    text = "\n".join(status.render(view))
    assert "IMPOSSIBLE STATS from sim-idle (treated as no stats, left alone): unused (MemFree)" in text


def test_a_failed_tick_and_a_failed_reload_are_published(tmp_path: Path):
    service, sim = _service(tmp_path)
    sim.advance(1.0)
    service.tick()
    sim.reachable = False
    assert not service.tick()
    (tmp_path / "memcoord.toml").write_text("[guest]\nwasteful_mib = 10\n")
    service.reload()
    view = json.loads((tmp_path / "state.json").read_text())
    assert view["hypervisor_ok"] is False and "unreachable" in view["hypervisor_error"]
    assert view["errors"]["by_kind"] == {"hypervisor": 1, "reload": 1}
    assert view["config"]["reload"] == "failed" and "wasteful_mib" in view["config"]["reload_error"]
    assert {d["name"] for d in view["domains"]} == SIM_GUESTS  # as last seen
    text = "\n".join(status.render(view))
    assert "HYPERVISOR UNREACHABLE" in text and "LAST RELOAD FAILED" in text


def test_read_says_why_there_is_no_view(tmp_path: Path):
    path = tmp_path / "state.json"
    with pytest.raises(state.StateUnavailable, match=r"not running \(no state file"):
        state.read(path)
    view = {"version": 1, "pid": os.getpid(), "running": True, "updated_at_s": 1000.0, "next_update_by_s": 1001.0}
    state.publish(path, view)
    assert state.read(path, now_s=1005.0).age_s == 5.0
    with pytest.raises(state.StateUnavailable, match=r"stale: .* 20 s overdue"):
        state.read(path, now_s=1021.0)
    state.publish(path, {**view, "running": False, "stopped_at_s": 1002.0})
    with pytest.raises(state.StateUnavailable, match=r"not running \(pid \d+ stopped at"):
        state.read(path, now_s=1003.0)
