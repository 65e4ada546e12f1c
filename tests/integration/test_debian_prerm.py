"""debian/memcoord.prerm, run by sh, on the daemon's undo record: what `apt remove` tells the admin."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from memcoord.daemon.undo import (
    FILE_NAME,
    Before,
    UndoRecord,
)

URI = "qemu:///system"
MIB = 1024


def test_removing_the_package_lists_the_guests_left_resized(tmp_path: Path) -> None:
    """debian/memcoord.prerm reads the daemon's record: what `apt remove` tells the admin."""
    prerm = Path(__file__).resolve().parents[2] / "debian" / "memcoord.prerm"
    UndoRecord(tmp_path / FILE_NAME).add(URI, {"web1": Before(1536 * MIB, 2048 * MIB, 0.0)})
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path)}
    removed = subprocess.run(["sh", str(prerm), "remove"], env=env, capture_output=True, text=True, check=True)
    assert "  virsh -c qemu:///system setmem web1 1536M --live" in removed.stdout.splitlines()
    assert "memcoord restore" in removed.stdout
    # An upgrade says nothing (the record and the command stay), and a broken record does not fail the removal.
    upgraded = subprocess.run(["sh", str(prerm), "upgrade"], env=env, capture_output=True, text=True, check=True)
    assert upgraded.stdout == ""
    (tmp_path / FILE_NAME).write_text("{")
    broken = subprocess.run(["sh", str(prerm), "remove"], env=env, capture_output=True, text=True, check=True)
    assert f"cannot read {tmp_path / FILE_NAME}" in broken.stdout
