"""The real `memcoord run` reads each guest's memcoord metadata from its libvirt definition (libvirt's
in-process test driver: no libvirtd, no guest)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

from memcoord.hypervisor.domain_settings import NAMESPACE

# libvirt's test driver keeps a domain's definition (its <metadata> included) but reports no balloon stats, and a
# guest without them is not in memcoord's sample. This runs the real `memcoord run` with the driver's bulk stats
# given the two figures the test driver does know for each domain (virDomainGetInfo: current and maximum KiB);
# everything else (the XML, the metadata check, the policy, the state file) is the daemon's own.
WITH_BALLOON_FIGURES = """
import sys, libvirt
bulk = libvirt.virConnect.getAllDomainStats
def with_balloon(conn, stats, flags=0):
    out = []
    for dom, record in bulk(conn, stats, flags):
        _state, max_kib, current_kib, _vcpus, _cpu_ns = dom.info()
        out.append((dom, {"balloon.current": current_kib, "balloon.maximum": max_kib, **record}))
    return out
libvirt.virConnect.getAllDomainStats = with_balloon
from memcoord.cli import main
sys.exit(main(sys.argv[1:]))
"""
METADATA_NS = NAMESPACE


def _test_domain(name: str, uuid_tail: int, settings: str) -> str:
    return f"""<domain type='test'>
    <name>{name}</name>
    <uuid>3c9a5c3e-0000-4000-8000-{uuid_tail:012d}</uuid>
    <metadata><memcoord:settings xmlns:memcoord="{METADATA_NS}">{settings}</memcoord:settings></metadata>
    <memory unit='KiB'>2097152</memory>
    <currentMemory unit='KiB'>1048576</currentMemory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <devices><memballoon model='virtio'/></devices>
  </domain>"""


def test_run_takes_floor_and_ceiling_from_domain_metadata_and_names_a_bad_value(tmp_path: Path):
    """Guests whose libvirt definitions carry memcoord metadata: the metadata takes effect (the floor and ceiling
    in the state file come from it), and a bad value leaves its guest alone and is logged as parse_domain_xml
    words it."""
    from memcoord.hypervisor.domain_settings import parse_domain_xml

    good = "<memcoord:min_mib>600</memcoord:min_mib><memcoord:max_mib>1800</memcoord:max_mib>"
    bad = "<memcoord:min_mib>2G</memcoord:min_mib>"
    node = tmp_path / "node.xml"
    domains = {"meta-a": good, "meta-b": good, "meta-bad": bad}
    node.write_text(
        "<node>" + "".join(_test_domain(n, i, body) for i, (n, body) in enumerate(domains.items(), 1)) + "</node>"
    )
    state = tmp_path / "state.json"
    path = tmp_path / "memcoord.toml"
    path.write_text(tomli_w.dumps({"libvirt": {"uri": f"test://{node}"}, "status": {"path": str(state)}}))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    cmd = [sys.executable, "-c", WITH_BALLOON_FIGURES, "run", "--config", str(path)]
    cmd += ["--interval", "0.2"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        _wait_for(lambda: len(_domains(state)) == 3, proc)
        seen = _domains(state)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    stderr = err.decode()
    assert proc.returncode == 0, stderr[-3000:]
    bounds = {n: (d["floor_kib"], d["floor_source"], d["ceiling_kib"], d["ceiling_source"]) for n, d in seen.items()}
    from_metadata = (600 * 1024, "metadata", 1800 * 1024, "metadata")
    assert bounds["meta-a"] == bounds["meta-b"] == from_metadata, bounds
    assert seen["meta-a"]["metadata"] == {"min_mib": 600, "max_mib": 1800}
    assert seen["meta-bad"]["excluded_by"] == "bad-metadata"
    in_process = parse_domain_xml("meta-bad", _test_domain("meta-bad", 3, bad))
    (problem,) = in_process.problems
    assert problem in stderr, stderr[-3000:]


def _domains(state: Path) -> dict[str, dict[str, object]]:
    """The domains in the daemon's state file whose settings have been read."""
    try:
        view = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return {d["name"]: d for d in view.get("domains", []) if d.get("metadata") is not None}


def _wait_for(ready, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"memcoord exited with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
