"""Unit tests run inside the test process: a test that starts a process (the memcoord CLI or daemon, a tool) is an
integration test and lives in tests/integration. This guard makes any attempt fail, naming the test."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest


class StartsAProcess(AssertionError):
    """A unit test tried to start a process."""


def _refuse(*_args: object, **_kwargs: object) -> None:
    raise StartsAProcess("a unit test starts no process: move it to tests/integration")


@pytest.fixture(autouse=True, scope="session")
def matplotlib_font_cache() -> None:
    """matplotlib builds its font cache the first time it is imported on a machine, by running fc-list: build it
    before the guard below, so that the unit tests that draw a plot pass on a new machine whatever ran before."""
    # Without the plot extra, the tests that draw fail on their own import, naming it.
    with contextlib.suppress(ImportError):
        import matplotlib.font_manager  # noqa: F401


# Module-scoped, so that it is in place before a module's own fixtures (a daemon started once per module).
@pytest.fixture(autouse=True, scope="module")
def no_processes() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "_execute_child", _refuse)
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve", "execvp"):
            patch.setattr(os, name, _refuse)
        yield
