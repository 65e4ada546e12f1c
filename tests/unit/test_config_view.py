"""The daemon's config view (config_view.py) against the pydantic models it is built from (config.py).

The daemon runs on the view, every other command and most tests on the models: if the two disagreed on a value,
a floor or an address, the daemon would do something the tests never saw. So every key the models have
(walked from model_fields: a new key is covered without touching this file) and every rule of the shared mixins
(walked from their public names) must give the same answer on both, for the shipped file, the defaults and
varied files. The view is also what the daemon gets from the validating child process: that path is run
for real here, including its failures.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from pydantic import BaseModel

from memcoord.core import config as config_mod
from memcoord.core.config_rules import ConfigError, ConfigFileError, ConfigRules, MetricsRules
from memcoord.core.model import DomainSettings, mib_to_kib
from memcoord.core.policy import PolicyState, thresholds_kib
from memcoord.core.step import step
from memcoord.daemon import config_view
from memcoord.daemon.service import Overrides, Service
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import Hog

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = (ROOT / "etc" / "memcoord.toml").read_text()

CONFIGS = {
    "shipped": SHIPPED,
    "defaults": "",
    "production": '[host]\nprofile = "production"\nmin_available_pct = 5.0\n[libvirt]\nexclude = ["web*"]\n',
    "production, own target": '[host]\nprofile = "production"\ntarget_available_mib = 4096\n',
    # A domain named like the view's own marker of a section is still a domain.
    "marker-named domain": """
[domains."__fields_set__"]
min_mib = 600
[domains."web1"]
max_mib = 900
""",
    "domains": """
[libvirt]
domains = ["web*", "db1", "odd\\"name"]
[guest]
min_mib = 300
[domains."web1"]
min_mib = 512
max_mib = 2048
[domains."web2"]
enabled = false
[domains."db1"]
max_mib = 128
enabled = true
[domains."odd\\"name"]
min_mib = 64
""",
    "metrics_listen": """
[metrics]
enabled = true
listen = "[::1]:9800"
""",
    "metrics_split": """
[metrics]
address = "0.0.0.0"
port = 9801
""",
    "guest_and_host": """
[guest]
starving_mib = 200
grow_step_pct = 10.0
wasteful_mib = 500
reclaim_step_mib = 50
idle_tax_mib = 8
[host]
min_available_mib = 512
guest_overhead_mib = 64
relief_step_mib = 64
""",
    "timeline_and_loop": """
[loop]
interval_s = 2.5
stats_period_s = 3
dry_run = true
[timeline]
path = "/var/lib/memcoord/timeline.jsonl"
max_mib = 8
[status]
path = "/tmp/state.json"
group = "root"
[host]
min_available_mib = 2048
target_available_mib = 3072
relief_step_mib = 64
[guest]
starving_mib = 200
starving_pct = 2.5
wasteful_mib = 600
reclaim_step_mib = 50
peak_hold_s = 600
""",
}

# Settings a domain's definition may carry, each rule asked with every one of them.
SETTINGS: tuple[DomainSettings | None, ...] = (
    None,
    DomainSettings(),
    DomainSettings(MappingProxyType({"min_mib": 1024, "max_mib": 4096, "enabled": True})),
    DomainSettings(MappingProxyType({"min_mib": 1, "max_mib": 64}), min_guarantee_kib=64),
    DomainSettings(MappingProxyType({"enabled": False})),
    DomainSettings(min_guarantee_kib=mib_to_kib(700)),
    DomainSettings(MappingProxyType({"min_mib": 100}), metadata_invalid=True),
)
NAMES = ("web1", "web2", "web3", "db1", 'odd"name', "other")
MAX_KIB = (mib_to_kib(100), mib_to_kib(1024), mib_to_kib(8192))


def both(text: str) -> tuple[config_mod.Config, config_view.ConfigView]:
    model = config_mod.parse(text, "test.toml")
    return model, config_view.from_tree(config_mod.to_tree(model))


def assert_same_values(model: BaseModel, view: Any, where: str) -> None:
    """Every field of the model, recursively, equal (and of the same type) on the view."""
    assert view.model_fields_set == model.model_fields_set, where
    for name in type(model).model_fields:
        m, v = getattr(model, name), getattr(view, name)
        if isinstance(m, BaseModel):
            assert_same_values(m, v, f"{where}.{name}")
        elif isinstance(m, dict):
            assert sorted(v) == sorted(m), f"{where}.{name}"
            for key, item in m.items():
                assert_same_values(item, v[key], f"{where}.{name}[{key!r}]")
        else:
            assert (type(v), v) == (type(m), m), f"{where}.{name}"


def rule_calls(rules: type) -> list[tuple[str, tuple[Any, ...]]]:
    """Every public rule of a mixin with every combination of the arguments it takes, by parameter name."""
    choices = {
        "name": NAMES,
        "settings": SETTINGS,
        "max_kib": MAX_KIB,
        "key": ("min_mib", "max_mib", "enabled"),
        "host_total_kib": (8 * 2**20, 512 * 2**20),
    }
    calls: list[tuple[str, tuple[Any, ...]]] = []
    for attr in (a for a in dir(rules) if not a.startswith("_")):
        member = inspect.getattr_static(rules, attr)
        if isinstance(member, property):
            calls.append((attr, ()))
            continue
        params = list(inspect.signature(member).parameters)[1:]
        combos: list[tuple[Any, ...]] = [()]
        for p in params:
            combos = [(*c, value) for c in combos for value in choices[p]]
        calls.extend((attr, combo) for combo in combos)
    return calls


def call(obj: Any, attr: str, args: tuple[Any, ...]) -> Any:
    value = getattr(obj, attr)
    return value(*args) if callable(value) else value


@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_every_key_has_the_same_value_on_the_view(which: str) -> None:
    model, view = both(CONFIGS[which])
    assert_same_values(model, view, which)


@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_every_rule_gives_the_same_answer_on_the_view(which: str) -> None:
    model, view = both(CONFIGS[which])
    config_calls = rule_calls(ConfigRules)
    assert {"floor", "ceiling", "exclusion", "manages", "stale_after_s"} <= {a for a, _ in config_calls}
    for attr, args in config_calls:
        got, want = call(view, attr, args), call(model, attr, args)
        if attr == "for_host":  # a config of each kind: compared by what it holds
            got, want = got.model_dump(mode="json"), want.model_dump(mode="json")
        assert got == want, (attr, args)
    metrics_calls = rule_calls(MetricsRules)
    assert {"bind", "tls"} <= {a for a, _ in metrics_calls}
    for attr, args in metrics_calls:
        assert call(view.metrics, attr, args) == call(model.metrics, attr, args), attr


@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_the_view_dumps_as_the_models_do(which: str) -> None:
    """The state file's effective config and the metrics' config hash are computed from this dump."""
    model, view = both(CONFIGS[which])
    for exclude_none in (False, True):
        assert view.model_dump(mode="json", exclude_none=exclude_none) == model.model_dump(
            mode="json", exclude_none=exclude_none
        )
    assert config_view.from_tree(config_mod.to_tree(model)) == view


def test_views_are_read_only_hashable_and_equal_by_value() -> None:
    _model, view = both(SHIPPED)
    _model2, same = both("")
    _model3, other = both("[guest]\nstarving_mib = 100\n")
    assert view == same and hash(view) == hash(same)
    assert view.guest == same.guest and hash(view.guest) == hash(same.guest)
    assert view.guest != other.guest
    assert len({view.guest, same.guest, other.guest}) == 2
    with pytest.raises(AttributeError):
        view.guest.min_mib = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        _ = view.guest.no_such_key
    with pytest.raises(TypeError):
        view.domains["x"] = None  # type: ignore[index]
    # The policy caches the thresholds on the guest section: the view is a good key.
    assert thresholds_kib(view, mib_to_kib(4096)) == thresholds_kib(_model, mib_to_kib(4096))


def test_command_line_overrides_apply_to_the_view_as_to_the_model() -> None:
    model, view = both(CONFIGS["domains"])
    overrides = Overrides(interval_s=0.2, dry_run=True)
    on_view, on_model = overrides.apply(view), overrides.apply(model)
    assert isinstance(on_view, config_view.ConfigView)
    assert on_view.loop.interval_s == on_model.loop.interval_s == 0.2
    assert on_view.loop.dry_run is on_model.loop.dry_run is True
    assert on_view.model_dump() == on_model.model_dump(mode="json")
    assert view.loop.interval_s == 1.0  # the original is unchanged
    with pytest.raises(AttributeError):
        view.loop.model_copy(update={"no_such_key": 1})


def hungry_host() -> SimulatedHypervisor:
    return SimulatedHypervisor(
        [
            SimGuest("web1", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(2048)),
            SimGuest("web3", max_kib=mib_to_kib(4096), target_kib=mib_to_kib(512), workload=Hog(mib_to_kib(40))),
            SimGuest("db1", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(1024)),
        ],
        host_total_kib=mib_to_kib(5120),
    )


@pytest.mark.parametrize("which", ["shipped", "domains", "guest_and_host"])
def test_the_policy_makes_the_same_plans_on_the_view(which: str) -> None:
    model, view = both(CONFIGS[which])
    runs = []
    for config in (model, view):
        hv, state, plans = hungry_host(), PolicyState(), []
        for _ in range(60):
            done = step(hv, config, state)
            state = done.state
            plans.append(done.plan)
            hv.advance(config.loop.interval_s)
        runs.append(plans)
    assert runs[0] == runs[1]
    assert any(p.changes for p in runs[0])  # the comparison compared something


# -- the validating child process ----------------------------------------------------------------------------------
BAD_FILES = {
    "unknown key and bound": "[guest]\nmin_mib = -1\nfoo = 2\n",
    "not toml": "[guest\n",
    "key conflict": "[guest]\nstarving_mib = 400\n",
    "odd domain name": '[domains."a\\nb"]\nmin_mib = 0\n',
    "metrics": '[metrics]\nlisten = "nowhere"\nport = 80\n',
}


@pytest.mark.parametrize("which", sorted(BAD_FILES))
def test_a_bad_file_gets_the_same_messages_through_the_child(tmp_path: Path, which: str) -> None:
    path = tmp_path / "memcoord.toml"
    path.write_text(BAD_FILES[which])
    with pytest.raises(ConfigError) as by_models:
        config_mod.load(path)
    with pytest.raises(ConfigError) as by_child:
        config_view.load(path)
    assert type(by_child.value) is type(by_models.value) is ConfigError
    assert str(by_child.value) == str(by_models.value)
    assert str(path) in str(by_child.value)


def test_unreadable_files_are_file_errors_through_the_child(tmp_path: Path) -> None:
    for path, setup in ((tmp_path / "missing.toml", None), (tmp_path, None), (tmp_path / "latin1.toml", b"a = '\xe9'")):
        if setup is not None:
            path.write_bytes(setup)
        with pytest.raises(ConfigError) as by_models:
            config_mod.load(path)
        with pytest.raises(ConfigError) as by_child:
            config_view.load(path)
        assert (type(by_child.value), str(by_child.value)) == (type(by_models.value), str(by_models.value))
    with pytest.raises(ConfigFileError):
        config_view.load(tmp_path / "missing.toml")


@pytest.mark.parametrize("which", sorted(CONFIGS))
def test_a_good_file_through_the_child_is_the_models_config(tmp_path: Path, which: str) -> None:
    path = tmp_path / "memcoord.toml"
    path.write_text(CONFIGS[which])
    view = config_view.load(path)
    assert isinstance(view, config_view.ConfigView)
    assert_same_values(config_mod.load(path), view, which)


def test_a_child_that_fails_or_hangs_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "memcoord.toml"
    path.write_text(SHIPPED)
    with pytest.raises(ConfigError, match=r"not validated: the validating process took more than 0\.001 s"):
        config_view.load(path, timeout_s=0.001)
    monkeypatch.setattr(config_view, "VALIDATE_COMMAND", ("/bin/false",))
    with pytest.raises(ConfigError, match=r"not validated: .* exited with 1") as failed:
        config_view.load(path)
    assert not isinstance(failed.value, ConfigFileError)
    monkeypatch.setattr(config_view, "VALIDATE_COMMAND", (str(tmp_path / "no-such-python"),))
    with pytest.raises(ConfigError, match="not validated: cannot start"):
        config_view.load(path)


def test_the_service_reloads_through_the_child_and_keeps_its_config_on_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "memcoord.toml"
    path.write_text('[libvirt]\nuri = "sim:///a"\n')
    service = Service(path, config_view.load(path), lambda _uri: hungry_host())
    assert isinstance(service.config, config_view.ConfigView)
    assert service.tick()
    path.write_text('[libvirt]\nuri = "sim:///a"\n[guest]\nmin_mib = 300\n')
    service.reload()
    assert isinstance(service.config, config_view.ConfigView)
    assert service.config.guest.min_mib == 300 and service.reload_note == ""
    path.write_text('[libvirt]\nuri = "sim:///a"\n[guest]\nmin_mib = 0\n')
    service.reload()
    assert service.config.guest.min_mib == 300
    assert f"{path}: guest.min_mib = 0: Input should be greater than 0" in service.reload_note
    assert service.tick()


def test_the_validating_child_is_this_interpreter_and_prints_json(tmp_path: Path) -> None:
    """What the child prints is what from_tree reads; its exit codes are sysexits' (66, 78)."""
    import json
    import subprocess

    path = tmp_path / "memcoord.toml"
    path.write_text(SHIPPED)
    ok = subprocess.run([sys.executable, "-m", "memcoord.daemon.validate", str(path)], capture_output=True, text=True)
    assert ok.returncode == os.EX_OK, ok.stderr
    assert config_view.from_tree(json.loads(ok.stdout)["config"]) == both(SHIPPED)[1]
    path.write_text("[guest]\nmin_mib = 0\n")
    bad = subprocess.run([sys.executable, "-m", "memcoord.daemon.validate", str(path)], capture_output=True, text=True)
    assert bad.returncode == os.EX_CONFIG and "guest.min_mib = 0" in json.loads(bad.stdout)["error"]
    gone = subprocess.run([sys.executable, "-m", "memcoord.daemon.validate", str(tmp_path / "x")], capture_output=True)
    assert gone.returncode == os.EX_NOINPUT
