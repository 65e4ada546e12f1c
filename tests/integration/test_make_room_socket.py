"""The make-room socket refuses other users, by its file mode and by the peer's credentials: a forked child that
drops to nobody asks (a process, so not a unit test)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.room import Clock, desk_for, serve

NOBODY_UID = 65534


def _ask_as_nobody(sock_path: Path) -> dict[str, Any]:
    """Connect as nobody (a forked child that drops its ids) and return what the daemon said."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(NOBODY_UID)
            os.setuid(NOBODY_UID)
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(sock_path))
                s.sendall(b'{"kib": 1024}\n')
                os.write(w, s.recv(4096))
        except OSError as exc:
            os.write(w, json.dumps({"state": "connect-error", "error": type(exc).__name__}).encode() + b"\n")
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return dict(json.loads(out.split(b"\n", 1)[0]))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_nobody_else_may_ask_by_file_mode_nor_by_credentials() -> None:
    # pytest's tmp_path lies under a 0700 directory: nobody would be stopped there, not by the socket.
    tmp_path = Path(tempfile.mkdtemp(prefix="mcroom-", dir="/tmp"))
    tmp_path.chmod(0o755)
    clock = Clock()
    desk = desk_for(tmp_path, clock)
    done = threading.Event()
    serve(desk, done, [0], clock)
    try:
        # The socket's mode (0660, root's group) stops nobody at connect().
        assert _ask_as_nobody(tmp_path / "room.sock") == {"state": "connect-error", "error": "PermissionError"}
        # Past the file mode, the peer's credentials are checked.
        os.chmod(tmp_path / "room.sock", 0o666)
        answer = _ask_as_nobody(tmp_path / "room.sock")
    finally:
        done.set()
        desk.close()
        shutil.rmtree(tmp_path)
    assert answer["state"] == "refused" and "permission denied" in answer["error"]
    assert desk.reservations == []
