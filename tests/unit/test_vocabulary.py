"""One vocabulary: every action kind (model.Action) has what each consumer needs, derived from its definition.

Adding a kind without a MESSAGE_ID, a plot marker or a readable timeline record fails here, not in the daemon
(a KeyError in the journal) or in a lab run that silently misses the action.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from memcoord.core.config import Config
from memcoord.core.model import Action, ApplyResult, Change, Plan, Rule
from memcoord.daemon import journal, timeline
from memcoord.daemon.observe import Observer
from memcoord.daemon.timeline import Event, Series
from memcoord.sim.host import demo_host

KINDS = list(Action)


def _change(kind: Action, domain: str = "sim-idle") -> Change:
    return Change(domain, kind, 1024 * 1024, 768 * 1024, f"test {kind}")


def test_every_kind_has_its_own_message_id():
    ids = [kind.message_id for kind in KINDS]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids
    others = [
        journal.MESSAGE_ID_SET_MEMORY_FAILED,
        journal.MESSAGE_ID_SET_MEMORY_UNKNOWN,
        *journal.LIFECYCLE_IDS.values(),
    ]
    assert len(set(ids + others)) == len(ids) + len(others), "a MESSAGE_ID is used twice"


def test_every_kind_has_a_plot_marker_of_its_own():
    from matplotlib.colors import is_color_like
    from matplotlib.markers import MarkerStyle

    for kind in KINDS:
        MarkerStyle(kind.marker)  # raises on an unknown marker
        assert is_color_like(kind.colour), (kind, kind.colour)
    styles = [(kind.marker, kind.colour) for kind in KINDS]
    assert len(set(styles)) == len(styles), "two kinds drawn alike"


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_the_journal_records_every_kind(kind: Action, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="memcoord"):
        journal.action(ApplyResult(_change(kind)), dry_run=False)
        journal.action(ApplyResult(_change(kind), error="refused"), dry_run=False)
        journal.action(ApplyResult(_change(kind), error="no answer", unknown=True), dry_run=False)
    ok, failed, unknown = (vars(r) for r in caplog.records)
    assert (ok["MESSAGE_ID"], ok["MEMCOORD_ACTION"], ok["MEMCOORD_OUTCOME"]) == (kind.message_id, kind.value, "set")
    assert (failed["MESSAGE_ID"], failed["MEMCOORD_ACTION"], failed["MEMCOORD_OUTCOME"]) == (
        journal.MESSAGE_ID_SET_MEMORY_FAILED,
        kind.value,
        "failed",
    )
    assert (unknown["MESSAGE_ID"], unknown["MEMCOORD_ACTION"], unknown["MEMCOORD_OUTCOME"]) == (
        journal.MESSAGE_ID_SET_MEMORY_UNKNOWN,
        kind.value,
        "unknown",
    )


def test_the_plot_marks_every_kind_as_its_definition_says():
    from memcoord.admin.plot import figure

    series = Series(source="test")
    g = series.guest("g")
    g.t_s, g.current_mib, g.unused_mib = [0.0, 1.0], [1024.0, 768.0], [500.0, 300.0]
    series.events = [Event(0.5, "g", kind.value, 768.0, kind.value) for kind in KINDS]
    (ax,) = figure(series).axes
    drawn = {line.get_label(): (line.get_marker(), line.get_color()) for line in ax.get_lines()}
    for kind in KINDS:
        assert drawn[kind.value] == (kind.marker, kind.colour), kind


def test_metrics_and_timeline_label_every_kind_by_its_value(tmp_path: Path):
    """Through the observer the daemon uses: the counter's label and the timeline's field are the kind's value."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    path = tmp_path / "timeline.jsonl"
    config = Config.model_validate({"timeline": {"path": str(path)}})
    observer = Observer()
    observer.configure(tmp_path / "memcoord.toml", config)
    snapshot = demo_host().sample()
    results = [ApplyResult(_change(kind)) for kind in KINDS]
    plan = Plan(tuple(r.change for r in results), {}, 0)
    observer.tick_done(snapshot, plan, results, 0.01)
    observer.stop()

    families = text_string_to_metric_families(generate_latest(observer.endpoint.registry).decode())
    counted = {s.labels["action"] for f in families if f.name == "memcoord_actions" for s in f.samples}
    assert counted == {kind.value for kind in KINDS}
    (line,) = timeline.read_lines(path)
    assert [a.action for a in timeline.actions(line)] == KINDS


def test_the_timeline_records_the_policy_step_of_each_change(tmp_path: Path):
    """Tools read why a guest moved as data (`model.Reason.rule`), not from the reason's words."""
    from memcoord.core.policy import PolicyState, decide
    from tests.helpers.snapshots import dom, snap

    path = tmp_path / "timeline.jsonl"
    config = Config.model_validate({"timeline": {"path": str(path)}})
    observer = Observer()
    observer.configure(tmp_path / "memcoord.toml", config)
    plan, _ = decide(snap(dom("a", 512, 100)), PolicyState(), Config())
    observer.tick_done(demo_host().sample(), plan, [ApplyResult(c) for c in plan.changes], 0.01)
    observer.stop()
    (line,) = timeline.read_lines(path)
    assert [(a.domain, a.rule) for a in timeline.actions(line)] == [("a", Rule.NEED)]
    line["actions"][0]["rule"] = "bribe"
    with pytest.raises(timeline.TimelineError, match="unknown rule 'bribe'"):
        timeline.actions(line, "t.jsonl:1")


def test_an_unknown_kind_in_a_timeline_is_an_error_that_names_it():
    line = {"t_s": 1.0, "actions": [{"domain": "g", "action": "teleport", "from_kib": 1, "to_kib": 2}]}
    with pytest.raises(timeline.TimelineError, match="unknown action 'teleport'"):
        timeline.actions(line, "t.jsonl:3")


def test_the_lab_reads_every_kind_from_a_growing_timeline(tmp_path: Path):
    """lab/coordinator.py follows the daemon's file: whole lines only, every kind, applied ones only."""
    import json

    from lab.coordinator import TimelineFollower, _action

    path = tmp_path / "t.jsonl"
    follower = TimelineFollower(path)
    assert follower.poll() == []  # not written yet
    acts = [{"domain": "g", "action": k.value, "from_kib": 1024 * 512, "to_kib": 1024 * 812} for k in KINDS]
    raw = json.dumps({"t_s": 100.0, "dry_run": False, "actions": acts}) + "\n"
    path.write_text(raw[:10])  # the daemon is mid-write
    assert follower.poll() == []
    with path.open("a") as f:
        f.write(raw[10:])
    (line,) = follower.poll()
    got = [_action(a) for a in timeline.actions(line)]
    assert [a.action for a in got] == [k.value for k in KINDS]
    assert {(a.domain, a.from_mib, a.to_mib) for a in got} == {("g", 512, 812)}
    dry = timeline.actions({**line, "dry_run": True})
    assert not any(a.applied for a in dry)

    # Rotation (the daemon moves PATH to PATH.1 and starts a new PATH): the old file's last line is not lost.
    with path.open("a") as f:
        f.write(json.dumps({"t_s": 101.0, "actions": []}) + "\n")
    path.replace(path.with_name("t.jsonl.1"))
    path.write_text(json.dumps({"t_s": 102.0, "actions": []}) + "\n")
    assert [line["t_s"] for line in follower.poll()] == [101.0, 102.0]
    # A line that is not a timeline line is skipped and kept as an error, and the lines after it still come.
    with path.open("a") as f:
        f.write("garbage\n" + json.dumps({"t_s": 103.0}) + "\n")
    assert [line["t_s"] for line in follower.poll()] == [103.0]
    assert len(follower.errors) == 1 and "t.jsonl:2: not a timeline line" in follower.errors[0], follower.errors
    follower.close()
