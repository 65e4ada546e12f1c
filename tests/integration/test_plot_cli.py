"""`memcoord plot` on a running daemon's timeline, the lab's and simulate's, as the real CLI."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest

from memcoord.admin.plot import figure
from memcoord.daemon import timeline
from tests.helpers.cli import memcoord
from tests.helpers.daemon import SIM_GUESTS, Daemon

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature and the chunk's type."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def lines_by_panel(fig) -> dict[str, list[str]]:
    """Each panel's y label (the guest) -> the labels of its plotted lines."""
    return {ax.get_ylabel().split("\n")[0]: [line.get_label() for line in ax.get_lines()] for ax in fig.axes}


@pytest.fixture(scope="module")
def daemon_timeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight seconds of the demo host recorded by a running daemon: the idle guest is reclaimed in that time."""
    tmp = tmp_path_factory.mktemp("timeline")
    path = tmp / "timeline.jsonl"
    daemon = Daemon(tmp, interval_s=0.25, extra=f'[timeline]\npath = "{path}"\n')
    try:
        daemon.wait_ticks(32)
    finally:
        assert daemon.stop() == 0
    return path


LAB_ROWS = [
    {"t_s": t, "guest": g, "alive": True, "current_mib": a, "unused_mib": u, "host_available_mib": 20000.0}
    for t, g, a, u in [
        (0.0, "lab1", 512.0, 300.0),
        (0.0, "lab2", 1280.0, 1100.0),
        (1.0, "lab1", 512.0, 120.0),
        (1.0, "lab2", 1180.0, 1000.0),
        (2.0, "lab1", 812.0, 400.0),
        (2.0, "lab2", 1080.0, 900.0),
    ]
]


def test_plot_of_a_daemon_timeline(daemon_timeline: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    result = memcoord("plot", str(daemon_timeline), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "3 guests" in result.stdout
    width, height = png_size(out)
    assert width >= 600 and height >= 400

    series = timeline.read(daemon_timeline)
    panels = lines_by_panel(figure(series))
    assert set(panels) == {*SIM_GUESTS, "host"}
    for guest in SIM_GUESTS:
        assert panels[guest][:2] == ["current", "unused"]
    assert "reclaim" in panels["sim-idle"]
    assert panels["host"][:2] == ["host available", "host guard"]
    # The lines carry the recorded values: the idle guest's actual memory went down.
    idle = series.guests["sim-idle"]
    assert idle.current_mib[0] == 1024 and idle.current_mib[-1] < 1024


def test_the_lab_draws_with_the_same_plot(tmp_path: Path):
    """The lab's own record (its Timeline class) goes through lab.timeline.to_series into memcoord.admin.plot."""
    from lab.timeline import Timeline, to_series

    events = [
        {"t_s": 0.2, "kind": "memcoord_start", "guest": None},
        {"t_s": 1.5, "kind": "action", "guest": "lab1", "action": "grow", "from_mib": 512, "to_mib": 812},
        {"t_s": 1.8, "kind": "oom_kill", "guest": "lab2", "pid": 42, "comm": "hog"},
        {"t_s": 1.9, "kind": "hog_killed", "guest": "lab2", "hog_mib": 300},
    ]
    lab = Timeline(rows=LAB_ROWS, events=events, meta={"host_min_available_mib": 1024})
    series = to_series(lab)
    assert series.source == "lab" and set(series.guests) == {"lab1", "lab2"}
    assert series.guests["lab1"].current_mib == [512.0, 512.0, 812.0]
    assert series.guests["lab2"].unused_mib == [1100.0, 1000.0, 900.0]
    assert series.host_guard_mib == 1024
    panels = lines_by_panel(figure(series))
    assert panels["lab1"] == ["current", "unused", "hog", "grow"]
    assert panels["lab2"] == ["current", "unused", "hog", "hog_killed", "oom_kill"]
    assert series.events[0].label == "grow 512->812 MiB"
    saved = lab.save(tmp_path)
    assert [p.name for p in saved] == ["timeline.csv", "timeline.json", "timeline.png"]
    assert png_size(saved[2])[0] > 0

    # The product reads only its own format: the lab's file gets a clear refusal, not a guess.
    refused = memcoord("plot", str(saved[1]))
    assert refused.returncode == 65 and "not a timeline line" in refused.stderr, refused.stderr


def test_plot_says_what_is_wrong_with_its_input(tmp_path: Path):
    missing = memcoord("plot", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == os.EX_NOINPUT and "cannot read" in missing.stderr
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    bad = memcoord("plot", str(junk))
    assert bad.returncode == os.EX_DATAERR and "not a timeline" in bad.stderr


def test_simulate_draws_with_the_same_plot(tmp_path: Path):
    from memcoord.admin.plot import from_simulation
    from memcoord.admin.simulate import load_scenario, run
    from memcoord.core.config import Config

    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "course-1-one-hog.toml"
    out = tmp_path / "sim.png"
    result = memcoord("simulate", str(scenario), "--duration", "30", "--plot", str(out))
    assert result.returncode == 0, result.stderr
    assert png_size(out)[0] >= 600

    report = run(load_scenario(scenario), Config(), duration_s=30, record=True)
    series = from_simulation(report)
    panels = lines_by_panel(figure(series))
    assert set(panels) == {g.name for g in report.guests} | {"host"}
    for g in report.guests:
        assert panels[g.name][:3] == ["current", "unused", "used"]
        current = series.guests[g.name].current_mib
        assert len(current) == len(series.host_t_s) and max(current) <= g.peak_size_mib <= g.max_mib
    assert any(len(set(s.current_mib)) > 1 for s in series.guests.values()), "no balloon moved"
    assert panels["host"] == ["host available", "host guard"]


def test_the_daemon_records_one_line_per_tick(daemon_timeline: Path):
    lines = [json.loads(raw) for raw in daemon_timeline.read_text().splitlines()]
    assert len(lines) >= 32
    assert all({d["name"] for d in line["domains"]} == SIM_GUESTS for line in lines)
    times = [line["t_s"] for line in lines]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 60
    actions = [a for line in lines for a in line["actions"]]
    assert any(a["domain"] == "sim-idle" and a["action"] == "reclaim" for a in actions)
    assert oct(daemon_timeline.stat().st_mode & 0o777) == "0o640"


def test_a_truncated_last_line_is_skipped(daemon_timeline: Path, tmp_path: Path):
    cut = tmp_path / "cut.jsonl"
    text = daemon_timeline.read_text()
    cut.write_text(text[: len(text) - 20])  # a daemon killed mid-write
    whole = timeline.read(daemon_timeline)
    partial = timeline.read(cut)
    assert len(partial.guests["sim-hog"].t_s) == len(whole.guests["sim-hog"].t_s) - 1
