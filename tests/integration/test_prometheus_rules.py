"""The shipped alerting rules, checked and unit-tested by Debian's promtool (`make deps` installs prometheus).

Not skipped when promtool is missing: CI installs it, and a rules file nobody tested is what this guards against.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "packaging" / "prometheus" / "memcoord.rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "memcoord.rules.test.yml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: install Debian's prometheus package (make deps)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def alerts() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_check_rules():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent():
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    for rule in alerts():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no case where it stays silent"
        assert rule["annotations"].get("runbook"), f"{rule['alert']}: no runbook annotation"


def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path):
    """The same tests against rules without their `for:` durations must fail: they do test the timing."""
    rules = yaml.safe_load(RULES.read_text())
    for rule in rules["groups"][0]["rules"]:
        rule.pop("for", None)
    broken = tmp_path / "packaging" / "prometheus" / "memcoord.rules.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(yaml.safe_dump(rules))
    copy = tmp_path / "tests" / "prometheus" / "memcoord.rules.test.yml"
    copy.parent.mkdir(parents=True)
    copy.write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", str(copy))
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
