"""What `memcoord run` imports: what it runs, and not what other commands or optional features need.

The daemon's resident memory is mostly the modules it has imported (libvirt is most of it; bench/daemon_rss.py
measures it). pydantic and the config models are not among them: the daemon validates its file in a child
process (config_view.py) and runs on a view of the result, at start and on every reload. Modules needed only by
an optional feature or by another command are imported where they are used. These tests run the real daemon
(libvirt's in-process test driver) under `python -X importtime` and fail when one of them is imported at start
or on a reload again, for example by a module-level import added to a module the daemon loads.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

from memcoord.hypervisor.domain_settings import NAMESPACE
from tests.unit.obs_daemon import free_port

ENDPOINT = "the Prometheus endpoint's, only with [metrics] enabled (exposition.py)"
# Module -> who needs it instead of the daemon with the shipped settings.
VALIDATOR = "the child process that validates the config file's (config_view.py, validate.py)"
NOT_IMPORTED_BY_RUN = {
    "pydantic": VALIDATOR,
    "pydantic_core": VALIDATOR,
    "memcoord.core.config": VALIDATOR,
    "memcoord.daemon.validate": VALIDATOR,
    "prometheus_client": ENDPOINT,
    "memcoord.daemon.exposition": ENDPOINT,
    "http.server": ENDPOINT,
    "wsgiref": ENDPOINT,
    "urllib.request": ENDPOINT,
    "gzip": ENDPOINT,
    "ssl": "only with [metrics] certfile set, to load the certificate (config.py)",
    "difflib": 'only to suggest a name for a [domains."NAME"] that matches no domain (domain_settings.py)',
    "tomli_w": "print-config's",
    "curses": "memcoord monitor's",
    "matplotlib": "memcoord plot's",
    "memcoord.buildtime.manpage": "the build's",
    "memcoord.admin.status": "memcoord status's",
    "memcoord.admin.plan": "memcoord plan's",
    "memcoord.admin.restore": "memcoord restore's",
    "memcoord.admin.simulate": "memcoord simulate's",
    "memcoord.sim.scenario": "memcoord simulate's",
    "memcoord.sim.host": "the simulated host's",
}
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.MULTILINE)


def imported_by_run(tmp_path: Path, extra: dict[str, object] | None = None) -> set[str]:
    """Every module `memcoord run` imports from its start to its exit after one tick that found nothing to do."""
    config = {
        "libvirt": {"uri": "test:///default", "domains": ["none-such-*"]},
        "status": {"path": str(tmp_path / "state.json")},
        **(extra or {}),
    }
    path = tmp_path / "memcoord.toml"
    path.write_text(tomli_w.dumps(config))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "memcoord.cli", "run", "--config", str(path), "--exit-when-idle"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no running domain to coordinate, exiting" in done.stderr, done.stderr[-3000:]
    return set(IMPORT_LINE.findall(done.stderr))


def loaded(modules: set[str], name: str) -> bool:
    return any(m == name or m.startswith(name + ".") for m in modules)


def test_run_imports_only_what_it_runs(tmp_path: Path):
    modules = imported_by_run(tmp_path)
    # What it does run: the list is read (else the check below checks nothing).
    assert {
        "libvirt",
        "memcoord.daemon.config_view",
        "memcoord.daemon.service",
        "memcoord.hypervisor.libvirt",
    } <= modules
    unneeded = {name: why for name, why in NOT_IMPORTED_BY_RUN.items() if loaded(modules, name)}
    assert unneeded == {}, "memcoord run imports modules it does not need (import them where they are used)"


def test_run_with_the_endpoint_imports_the_client_library(tmp_path: Path):
    """The same run with [metrics] enabled: the endpoint's modules come in, so the check above is not vacuous."""
    modules = imported_by_run(tmp_path, {"metrics": {"enabled": True, "listen": f"127.0.0.1:{free_port()}"}})
    assert {"prometheus_client", "memcoord.daemon.exposition", "http.server"} <= modules


def test_run_imports_no_validator_on_reloads(tmp_path: Path):
    """A daemon that ticks, reloads a good file, then a bad one, then stops: pydantic stays out all along (the
    child validated both), and both reloads were really done."""
    state = tmp_path / "state.json"
    path = tmp_path / "memcoord.toml"
    config = {"libvirt": {"uri": "test:///default", "domains": ["none-such-*"]}, "status": {"path": str(state)}}
    path.write_text(tomli_w.dumps(config))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    cmd = [sys.executable, "-X", "importtime", "-m", "memcoord.cli", "run", "--config", str(path), "--interval", "0.1"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        _wait_for(lambda: state.exists(), proc)
        config["guest"] = {"min_mib": 300}
        path.write_text(tomli_w.dumps(config))
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: _reloads(state, "reloads_ok") == 1, proc)
        path.write_text("[guest]\nmin_mib = 0\n")
        proc.send_signal(signal.SIGHUP)
        _wait_for(lambda: _reloads(state, "reloads_failed") == 1, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    stderr = err.decode()
    assert proc.returncode == 0, stderr[-3000:]
    assert "config reloaded from" in stderr and "guest.min_mib = 0: Input should be greater than 0" in stderr
    modules = set(IMPORT_LINE.findall(stderr))
    assert "memcoord.daemon.service" in modules
    assert not any(loaded(modules, name) for name in ("pydantic", "pydantic_core", "memcoord.core.config")), sorted(
        m for m in modules if "pydantic" in m or m == "memcoord.core.config"
    )


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


def test_run_checks_domain_metadata_without_pydantic(tmp_path: Path):
    """Guests whose libvirt definitions carry memcoord metadata: the daemon checks it in a child process, so
    pydantic stays out, and the metadata still takes effect (the floor and ceiling in the state file come from
    it), and a bad value is logged with the same text as an in-process check gives."""
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
    cmd = [sys.executable, "-X", "importtime", "-c", WITH_BALLOON_FIGURES, "run", "--config", str(path)]
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
    modules = set(IMPORT_LINE.findall(stderr))
    assert {"memcoord.daemon.service", "memcoord.hypervisor.domain_settings"} <= modules
    assert not any(loaded(modules, name) for name in ("pydantic", "pydantic_core", "memcoord.core.config")), sorted(
        m for m in modules if "pydantic" in m or m == "memcoord.core.config"
    )


def _domains(state: Path) -> dict[str, dict[str, object]]:
    """The domains in the daemon's state file whose settings have been read."""
    try:
        view = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return {d["name"]: d for d in view.get("domains", []) if d.get("metadata") is not None}


def _reloads(state: Path, key: str) -> int:
    """A count from the daemon's state file (written whole, by a rename)."""
    return int(json.loads(state.read_text())["config"][key])


def _wait_for(ready, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"memcoord exited with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
