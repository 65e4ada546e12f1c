"""Shared fixtures (a real sd_notify socket, tests/helpers/notify.py) and the CI rule.

The CI rule: with CI=true a skipped test fails, with its reason. A test that needs a real part (libvirtd, QEMU,
nspawn, a Debian package) must set it up itself; in CI a skip would only hide that the part is missing. A
non-strict xfail fails too (it passes whatever happens); xfail(strict=True) is kept, because it fails the day the
known defect is fixed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.notify import NotifySocket


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _skip_reason(longrepr: object) -> str:
    """The reason of a skip report: pytest stores (path, lineno, "Skipped: reason") for skips."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, lineno, message = longrepr
        return f"{message.removeprefix('Skipped: ')} ({path}:{lineno})"
    return str(longrepr)


def _xfail_is_strict(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("xfail")
    if marker is None:  # pytest.xfail() called inside the test: never strict
        return False
    return bool(marker.kwargs.get("strict", item.config.getini("xfail_strict")))


def _fail_in_ci(report: pytest.TestReport | pytest.CollectReport, why: str) -> None:
    report.outcome = "failed"
    report.longrepr = f"CI=true: {why}"
    report.sections.append(("CI=true", why))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    if not in_ci():
        return
    wasxfail = getattr(rep, "wasxfail", None)
    if wasxfail is not None and not _xfail_is_strict(item):
        # Non-strict xfail: xfailed (outcome skipped) or xpassed (outcome passed) both pass; in CI neither may.
        what = "xpassed" if rep.passed else "xfailed"
        delattr(rep, "wasxfail")
        _fail_in_ci(rep, f"a non-strict xfail {what} (make it strict or fix the test): {wasxfail}")
    elif rep.skipped and wasxfail is None:
        _fail_in_ci(rep, f"skipped: {_skip_reason(rep.longrepr)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    """Module-level skips (pytest.importorskip, skip(allow_module_level=True)) happen at collection."""
    outcome = yield
    rep: pytest.CollectReport = outcome.get_result()
    if in_ci() and rep.skipped:
        _fail_in_ci(rep, f"module skipped: {_skip_reason(rep.longrepr)}")


def pytest_report_header(config: pytest.Config) -> str:
    return "CI=true: a skipped test or a non-strict xfail fails" if in_ci() else "CI not set: skips are reported (-rs)"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()
