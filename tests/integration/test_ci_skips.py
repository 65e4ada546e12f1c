"""The CI rule of tests/conftest.py, run on throwaway test files with pytester: with CI=true a skip fails and names
its reason; without CI it stays a skip."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]
CONFTEST = (REPO / "tests" / "conftest.py").read_text()

SKIPPING = """
import pytest

def test_needs_a_part():
    pytest.skip("libvirtd is not running")

@pytest.mark.skipif(True, reason="no qemu here")
def test_marked():
    pass

def test_fine():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    return pytester


def _run(p: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the conftest's own imports (tests.helpers)
    return p.runpytest_subprocess("-rfEsxX")


def test_in_ci_a_skip_fails_with_its_reason(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    project.makepyfile(test_parts=SKIPPING)
    result = _run(project, monkeypatch, "true")
    result.assert_outcomes(passed=1, failed=1, errors=1)  # the skipif marker skips in setup: an error there
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*CI=true: skipped: libvirtd is not running*", "*CI=true: skipped: no qemu here*"])


def test_outside_ci_a_skip_stays_a_skip_with_its_reason(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    project.makepyfile(test_parts=SKIPPING)
    for ci in (None, "false"):
        result = _run(project, monkeypatch, ci)
        result.assert_outcomes(passed=1, skipped=2)
        assert result.ret == pytest.ExitCode.OK
        result.stdout.fnmatch_lines(["SKIPPED*libvirtd is not running*", "SKIPPED*no qemu here*"])


def test_in_ci_a_module_level_skip_fails(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    project.makepyfile(test_nomod="import pytest\npytest.importorskip('no_such_module_x')\n\ndef test_a():\n    pass\n")
    result = _run(project, monkeypatch, "true")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*CI=true: module skipped:*no_such_module_x*"])
    result = _run(project, monkeypatch, None)
    result.assert_outcomes(skipped=1)


XFAILS = """
import pytest

@pytest.mark.xfail(reason="loose")
def test_loose_fails():
    assert False

@pytest.mark.xfail(reason="loose")
def test_loose_passes():
    pass

@pytest.mark.xfail(strict=True, reason="known cycle")
def test_strict_fails():
    assert False

def test_imperative():
    pytest.xfail("called inside")
"""


def test_in_ci_only_a_strict_xfail_may_xfail(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    project.makepyfile(test_x=XFAILS)
    result = _run(project, monkeypatch, "true")
    result.assert_outcomes(failed=3, xfailed=1)
    result.stdout.fnmatch_lines(
        ["*CI=true: a non-strict xfail xfailed*loose*", "*CI=true: a non-strict xfail xpassed*"]
    )
    result = _run(project, monkeypatch, None)
    result.assert_outcomes(xfailed=3, xpassed=1)


def test_markers_are_strict(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """pyproject's addopts carry --strict-markers: a misspelt marker is an error, here with the same option."""
    project.makepyfile(test_m="import pytest\n\n@pytest.mark.rael\ndef test_a():\n    pass\n")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = project.runpytest_subprocess("--strict-markers")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*'rael' not found in `markers` configuration option*"])


def test_the_project_runs_with_strict_markers_and_skip_reasons():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    addopts = pyproject["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert "--strict-markers" in addopts
    assert any(opt.startswith("-r") and "s" in opt for opt in addopts), addopts
