"""`memcoord make-room`: ask the running daemon for room above the host guard, and wait until it is there.

The daemon does the work (daemon/room.py): this command only asks over its socket and reports. It never calls
into libvirt when given the domain's XML (`--domain-xml`), so a libvirt hook can run it while libvirtd waits.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

from memcoord.core.model import KIB_PER_MIB, kib_to_mib

# The daemon answers after a tick: the last one before the asker's deadline must have time to run and be read.
ANSWER_MARGIN_S = 1.5
DEFAULT_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 2.0

DESCRIPTION = """\
Ask the running memcoord to hold room above the host guard ([host] min_available_mib): N MiB (--mib), or what
domain DOMAIN starts with (--for: its <currentMemory>, plus [host] guest_overhead_mib for QEMU). The daemon
relieves guests that can spare memory (never below their band's low line, nor their floor), keeps anybody from
growing into the room, and holds it for [room] hold_s (a domain's room shrinks as its QEMU takes the memory).
The command waits until the host has the room, or --timeout passes.

--for reads the domain's definition from libvirt (read-only), unless --domain-xml gives it (a file, or - for
stdin): that is what the libvirt hook does, since a hook must not call back into libvirtd. The socket is
[room] socket of the config; root, the daemon's user and members of [status] group may ask."""

EPILOG = """\
exit status: 0 the room is there; 75 it is not after --timeout (the shortfall is printed; the daemon keeps
holding what it could); 69 the daemon cannot be reached (not running, or no [room] socket); 77 the daemon
refused (not root nor in [status] group); 64 bad arguments; 65 the domain's XML has no memory size; 66 the XML
file cannot be read, or libvirt does not know the domain; 78 invalid config."""


class RoomError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def domain_kib(domain: str, xml_path: str | None, uri: str, timeout_s: float, stdin: IO[str] = sys.stdin) -> int:
    """What the domain starts with (KiB), from the XML given, else from libvirt's definition of it."""
    from memcoord.hypervisor.domain_settings import start_memory_kib

    if xml_path is not None:
        try:
            xml_text = stdin.read() if xml_path == "-" else Path(xml_path).read_text()
        except OSError as exc:
            raise RoomError(f"cannot read {xml_path}: {exc.strerror}", os.EX_NOINPUT) from None
    else:
        xml_text = _definition(domain, uri, timeout_s)
    try:
        return start_memory_kib(xml_text)[1]
    except ValueError as exc:
        raise RoomError(f"{domain}: {exc}", os.EX_DATAERR) from None


def _definition(domain: str, uri: str, timeout_s: float) -> str:
    from memcoord.core.port import HypervisorError
    from memcoord.hypervisor.libvirt import domain_xml

    try:
        return domain_xml(uri, domain, timeout_s)
    except HypervisorError as exc:
        raise RoomError(str(exc), os.EX_NOINPUT) from None


def ask(socket_path: str, kib: int, domain: str | None, timeout_s: float, verbose: bool = False) -> dict[str, Any]:
    """Send one request and read answers until the final one (room, short, refused) or timeout_s passes; the
    final answer, or {"state": "no-answer", "short_kib": last heard} at the timeout."""
    deadline_s = time.monotonic() + timeout_s
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(min(CONNECT_TIMEOUT_S, timeout_s))
    try:
        sock.connect(socket_path)
    except FileNotFoundError:
        raise RoomError(f"no make-room socket at {socket_path}: is memcoord running?", os.EX_UNAVAILABLE) from None
    except PermissionError:
        raise RoomError(f"{socket_path}: permission denied (root or [status] group only)", os.EX_NOPERM) from None
    except OSError as exc:
        raise RoomError(f"cannot reach memcoord at {socket_path}: {exc.strerror or exc}", os.EX_UNAVAILABLE) from None
    wait_s = max(0.0, timeout_s - ANSWER_MARGIN_S)
    last: dict[str, Any] = {"state": "no-answer", "short_kib": None}
    with sock:
        try:
            sock.sendall((json.dumps({"kib": kib, "domain": domain, "wait_s": round(wait_s, 1)}) + "\n").encode())
            buffer = b""
            while True:
                left_s = deadline_s - time.monotonic()
                if left_s <= 0:
                    return last
                sock.settimeout(left_s)
                data = sock.recv(4096)
                if not data:
                    return last if last["state"] != "waiting" else {**last, "state": "no-answer"}
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    answer = json.loads(line)
                    if answer.get("state") != "waiting":
                        return dict(answer)
                    last = {"state": "no-answer", "short_kib": answer.get("short_kib")}
                    if verbose:
                        print(f"memcoord: waiting, {kib_to_mib(answer['short_kib']):.0f} MiB short", file=sys.stderr)
        except TimeoutError:
            return last
        except (OSError, ValueError) as exc:
            raise RoomError(f"lost memcoord at {socket_path}: {exc}", os.EX_UNAVAILABLE) from None


def main(config: Any, args: argparse.Namespace) -> int:
    socket_path = args.socket or config.room.socket
    if not socket_path:
        print("memcoord: make-room: [room] socket is empty: the daemon takes no requests", file=sys.stderr)
        return os.EX_UNAVAILABLE
    try:
        if args.mib is not None:
            kib, domain = args.mib * KIB_PER_MIB, None
        else:
            domain = args.domain
            kib = domain_kib(domain, args.domain_xml, config.libvirt.uri, args.timeout)
        answer = ask(socket_path, kib, domain, args.timeout, args.verbose)
    except RoomError as exc:
        print(f"memcoord: make-room: {exc}", file=sys.stderr)
        return exc.code
    what = f"{kib_to_mib(kib):.0f} MiB" + (f" for {domain}" if domain else "")
    state = answer.get("state")
    if state == "room":
        print(f"room for {what}: held for up to {answer.get('hold_s', 0):.0f} s")
        return os.EX_OK
    if state == "refused":
        error = str(answer.get("error"))
        print(f"memcoord: make-room: refused: {error}", file=sys.stderr)
        return os.EX_NOPERM if error.startswith("permission") else os.EX_USAGE
    short_kib = answer.get("short_kib")
    if short_kib is None:
        print(f"memcoord: make-room: no answer for {what} within {args.timeout:g} s", file=sys.stderr)
    else:
        print(f"memcoord: make-room: {what}: {kib_to_mib(short_kib):.0f} MiB short after {args.timeout:g} s",
              file=sys.stderr)  # fmt: skip
    return os.EX_TEMPFAIL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from memcoord.admin.cliargs import config_arg, positive_float, positive_mib

    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--mib", type=positive_mib, metavar="N", help="room for N MiB")
    what.add_argument("--for", dest="domain", metavar="DOMAIN", help="room for what DOMAIN starts with")
    parser.add_argument(
        "--domain-xml", metavar="PATH", help="with --for: the domain's XML from this file (- for stdin), not libvirt"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help="give up after S seconds, exit 75 (%(default)s)",
    )
    parser.add_argument("--socket", metavar="PATH", help="the daemon's socket (default: [room] socket)")
    config_arg(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="print each of the daemon's progress answers")
