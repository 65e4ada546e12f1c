"""Fixtures for the acceptance suite on real QEMU guests (marked `real`).

The guest image is built once per session; each scenario boots its own fresh lab under a
per-run prefix, so it never meets another run's guests (or another engineer's) on a shared
libvirtd. A failed scenario leaves its timeline, PNG, console logs and memcoord log under
artifacts/e2e/<test>/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "artifacts" / "e2e"


def _real_lab_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (qemu:///system)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "python3-libvirt missing"
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86 missing"
    return None


@pytest.fixture(scope="session")
def guest_image():  # type: ignore[no-untyped-def]
    reason = _real_lab_missing()
    if reason:
        pytest.skip(reason)
    from lab.image import build_image

    return build_image()


@pytest.fixture(scope="session")
def lab_prefix() -> str:
    """Unique per session (pid): memcoord's domain glob then matches this run's guests only."""
    return f"mclab-e2e{os.getpid()}-"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def run_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """Where a scenario's LabRun writes; copied to artifacts/e2e/<test>/ when the test fails."""
    yield tmp_path
    failed = any(
        getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed
        for w in ("setup", "call")
    )
    if failed:
        dest = ARTIFACTS_DIR / request.node.name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(tmp_path, dest)
        print(f"\nartifacts kept in {dest}")
