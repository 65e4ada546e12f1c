"""The real journalctl reads memcoord's journal catalog (`journalctl --root DIR --update-catalog`, then
`--list-catalog` and `--dump-catalog`): the file the packages install in /usr/lib/systemd/catalog."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from memcoord.buildtime import catalog
from memcoord.core.model import Action


def test_journalctl_reads_the_catalog(tmp_path: Path) -> None:
    """systemd's own parser takes every entry, with the record's fields substituted in by `journalctl -x`."""
    journalctl = shutil.which("journalctl")
    assert journalctl, "journalctl is needed (Debian: systemd)"
    catalog_dir = tmp_path / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    (catalog_dir / "memcoord.catalog").write_text(catalog.render())
    run = subprocess.run([journalctl, f"--root={tmp_path}", "--update-catalog"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    listed = subprocess.run(
        [journalctl, f"--root={tmp_path}", "--list-catalog"], capture_output=True, text=True, check=True
    ).stdout
    ids = re.findall(r"^-- ([0-9a-f]{32})$", catalog.render(), flags=re.MULTILINE)
    assert sorted(line.split()[0] for line in listed.splitlines()) == sorted(ids), listed
    grow = subprocess.run(
        [journalctl, f"--root={tmp_path}", "--dump-catalog", Action.GROW.message_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Subject: Guest @MEMCOORD_DOMAIN@ grown" in grow and "starving line" in grow, grow
