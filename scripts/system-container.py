#!/usr/bin/env python3
"""Boot the system tests' Debian 12 container (real systemd 252, host's /run/libvirt bound in), run README's
`make install` in it, and keep it up until Ctrl-C, printing how to get a shell inside. For poking at the unit by
hand; the tests themselves use the same code (tests/system/container.py).

    sudo .venv/bin/python scripts/system-container.py [--no-install]
    sudo nsenter -t LEADER -a bash        # then: systemctl start memcoord; journalctl -u memcoord; ...
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.container import CACHE, Container  # noqa: E402


def main() -> int:
    """Boot, install, wait for a signal, tear down."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-install", action="store_true", help="boot only; do not run make install")
    args = parser.parse_args()
    ct = Container(f"mcsys-shell{os.getpid()}", CACHE / f"shell-{os.getpid()}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        ct.prepare(REPO)
        ct.boot()
        if not args.no_install:
            r = ct.sh("cd /root/memcoord && make install", check=False, timeout=600)
            print(r.stdout[-2000:], r.stderr[-2000:], sep="\n")
            if r.returncode:
                print(f"make install failed ({r.returncode})", file=sys.stderr)
        print(f"\ncontainer up: nsenter -t {ct.leader} -a bash   (Ctrl-C here stops and deletes it)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ct.shutdown()
        ct.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
