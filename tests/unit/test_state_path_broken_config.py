"""`memcoord status` / `print-config --running` find the state file when the config file is broken: that is when
the admin asks what the daemon (still on its last good config) runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from memcoord.admin.status import default_state_path
from memcoord.core.config import StatusConfig


def test_a_file_that_does_not_validate_still_names_its_state_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text('[status]\npath = "/run/x/state.json"\n\n[guest]\nstarving_mib = -5\n')
    assert default_state_path(cfg) == Path("/run/x/state.json")
    assert f"config not usable ({cfg}: guest.starving_mib = -5" in capsys.readouterr().err


def test_a_file_that_is_not_toml_gives_the_default_state_file(tmp_path: Path) -> None:
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text("[status\n")
    assert default_state_path(cfg) == Path(StatusConfig().path)


def test_a_valid_file_is_read_as_always(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "memcoord.toml"
    cfg.write_text('[status]\npath = "/run/y/state.json"\n')
    assert default_state_path(cfg) == Path("/run/y/state.json")
    assert capsys.readouterr().err == ""
