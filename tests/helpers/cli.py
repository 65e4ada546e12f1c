"""The real `memcoord` console script in a subprocess, as an admin runs it, and what a clean failure looks like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MEMCOORD = Path(sys.executable).parent / "memcoord"
EX_USAGE, EX_NOINPUT, EX_CONFIG = os.EX_USAGE, os.EX_NOINPUT, os.EX_CONFIG  # 64, 66, 78 (sysexits.h)


def memcoord(*args: str, prefix: tuple[str, ...] = (), timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    assert MEMCOORD.exists(), f"console script not installed at {MEMCOORD} (pip install -e .)"
    return subprocess.run(
        [*prefix, str(MEMCOORD), *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == "", proc.stdout
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
