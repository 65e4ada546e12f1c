"""memcoord(8) and memcoord.toml(5) render with groff and man without warnings."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from memcoord.buildtime import manpage


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("man")
    manpage.write(out)
    return {"8": out / "memcoord.8", "5": out / "memcoord.toml.5"}


@pytest.mark.parametrize("page", ["8", "5"])
def test_pages_render_without_warnings(pages: dict[str, Path], page: str) -> None:
    groff = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(pages[page])], capture_output=True, text=True, check=False
    )
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr
    assert shutil.which("man"), "man-db is needed: apt-get install man-db"
    env = dict(os.environ, MANWIDTH="80", LANG="C.UTF-8")
    man = subprocess.run(
        ["man", "--warnings", "-l", str(pages[page])], capture_output=True, text=True, env=env, check=False
    )
    assert man.returncode == 0 and man.stderr == "", man.stderr
    assert ("MEMCOORD(8)" if page == "8" else "MEMCOORD.TOML(5)") in man.stdout
