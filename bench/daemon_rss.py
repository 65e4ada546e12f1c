"""The daemon's memory: the real `memcoord run` process, its RSS and PSS after some ticks and some reloads.

    .venv/bin/python -m bench.daemon_rss [--uri test:///default] [--ticks 20] [--reloads 5] [--modules]
                                         [--metadata N]

Starts `memcoord run` (the venv's console script, as the unit starts it) with the shipped config, its state file
in a temporary directory and `--interval 0.2`, against libvirt's in-process test driver by default: the same
libvirt module and shared libraries as on a real host, no guests and no lock needed. `--uri qemu:///system
--domains 'none-*'` measures it on the host's libvirtd, managing no guest: on a shared libvirtd, `--domains` is
required, so that the shipped config's `domains = ["*"]` never balloons someone else's guests.
`--metadata N` runs it on the test driver with N domains whose definitions carry memcoord metadata
(`<memcoord:settings>`, two distinct contents, one of them invalid), so that the daemon checks metadata while it
is measured; the test driver reports no balloon stats, so those domains are read, not coordinated.
Waits for `--ticks` ticks (read from the state file), reads /proc/PID/status (VmRSS, RssAnon, RssFile) and
/proc/PID/smaps_rollup (Pss), then sends `--reloads` SIGHUPs (each with a good file, the same settings) and
reads them again after a few more ticks. With `--modules`, also prints the number of modules the daemon
imported and the ones from a list of heavy standard-library and third-party packages (from `python -X importtime`
of the same command, which adds its own overhead: RSS is measured without it). With `--breakdown`, also what each
part of the daemon's imports adds to the RSS of a fresh interpreter, in the order the daemon needs them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

from bench.real_soak import pss_kib, status_kib
from lab.coordinator import SHIPPED_CONFIG, memcoord_command
from memcoord.hypervisor.domain_settings import NAMESPACE

TICK_WAIT_S = 60.0
# Large packages: --modules lists those the daemon has loaded.
HEAVY = (
    "pydantic",
    "prometheus_client",
    "http.server",
    "wsgiref",
    "email",
    "difflib",
    "timeit",
    "gzip",
    "xml.etree",
    "importlib.metadata",
    "decimal",
    "csv",
    "ssl",
    "ipaddress",
    "urllib.request",
    "zoneinfo",
)


# What the daemon imports, in groups, each measured after the ones before it (--breakdown).
BREAKDOWN = (
    ("the interpreter", ()),
    (
        "the standard library the daemon uses",
        (
            "argparse",
            "logging",
            "dataclasses",
            "json",
            "pathlib",
            "threading",
            "select",
            "subprocess",
            "xml.etree.ElementTree",
        ),
    ),
    ("the libvirt binding and its C libraries", ("libvirt",)),
    ("sd_notify (systemd.daemon)", ("systemd.daemon",)),
    # pydantic's plugin loader brings importlib.metadata (email, zipfile, csv ...) when it builds its first model.
    ("pydantic and pydantic-core", ("pydantic", "pydantic.main", "pydantic.plugin._loader")),
    ("the config models", ("memcoord.core.config",)),
    ("the Prometheus client and its HTTP server", ("prometheus_client", "memcoord.daemon.exposition")),
    ("the rest of memcoord run", ("memcoord.cli", "memcoord.daemon.service", "memcoord.hypervisor.libvirt")),
)
BREAKDOWN_CHILD = """
import gc, importlib, json, sys
def kib():
    gc.collect()
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out
rows = []
for label, modules in json.loads(sys.argv[1]):
    for name in modules:
        importlib.import_module(name)
    rows.append((label, kib()))
print(json.dumps(rows))
"""


def breakdown() -> list[tuple[str, dict[str, int]]]:
    done = subprocess.run(
        [sys.executable, "-c", BREAKDOWN_CHILD, json.dumps(BREAKDOWN)], capture_output=True, text=True, check=True
    )
    return [(label, kib) for label, kib in json.loads(done.stdout)]


def ticks(state_path: Path) -> int:
    try:
        return int(json.loads(state_path.read_text())["ticks"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_ticks(proc: subprocess.Popen[bytes], state_path: Path, n: int) -> None:
    deadline = time.monotonic() + TICK_WAIT_S
    while ticks(state_path) < n:
        if proc.poll() is not None:
            raise SystemExit(f"memcoord exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"no {n} ticks within {TICK_WAIT_S:g} s (state file {state_path})")
        time.sleep(0.05)


def write_config(work: Path, uri: str, domains: list[str]) -> Path:
    with SHIPPED_CONFIG.open("rb") as f:
        cfg = tomllib.load(f)
    cfg["libvirt"]["uri"] = uri
    cfg["libvirt"]["domains"] = domains
    cfg["status"]["path"] = str(work / "state.json")
    path = work / "memcoord.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


METADATA_NS = NAMESPACE
METADATA_BODIES = (
    "<memcoord:min_mib>600</memcoord:min_mib><memcoord:max_mib>1800</memcoord:max_mib>",
    "<memcoord:min_mib>2G</memcoord:min_mib>",
)


def write_metadata_node(work: Path, n: int) -> str:
    """A test-driver node file with n running domains carrying memcoord metadata; its URI."""
    domains = "".join(
        f"""<domain type='test'><name>meta{i}</name><uuid>3c9a5c3e-0000-4000-8000-{i:012d}</uuid>
        <metadata><memcoord:settings xmlns:memcoord="{METADATA_NS}">{METADATA_BODIES[i % 2]}</memcoord:settings>
        </metadata><memory unit='KiB'>2097152</memory><currentMemory unit='KiB'>1048576</currentMemory>
        <vcpu>1</vcpu><os><type>hvm</type></os></domain>"""
        for i in range(1, n + 1)
    )
    path = work / "node.xml"
    path.write_text(f"<node>{domains}</node>")
    return f"test://{path}"


def memory_line(label: str, pid: int) -> str:
    st = status_kib(pid)
    return (
        f"{label}: RSS {st['VmRSS'] / 1024:.1f} MiB (anon {st['RssAnon'] / 1024:.1f}, "
        f"file {st['RssFile'] / 1024:.1f}), PSS {pss_kib(pid) / 1024:.1f} MiB"
    )


def loaded_modules(cmd: list[str], env: dict[str, str], state_path: Path) -> list[str]:
    """The modules the daemon imports up to its first tick, from -X importtime's report on stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", *cmd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        wait_ticks(proc, state_path, 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    found = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", err.decode(), re.MULTILINE)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--uri", default="test:///default")
    p.add_argument("--domains", help="comma-separated globs of the domains managed (test: URIs: default all)")
    p.add_argument("--ticks", type=int, default=20)
    p.add_argument("--reloads", type=int, default=5)
    p.add_argument("--modules", action="store_true", help="also list the heavy modules the daemon imports")
    p.add_argument("--breakdown", action="store_true", help="also what each part of its imports adds to the RSS")
    p.add_argument("--metadata", type=int, metavar="N", help="test driver with N domains carrying memcoord metadata")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mcrss-"))
    if args.metadata:
        args.uri = write_metadata_node(work, args.metadata)
    if args.domains is None:
        if not args.uri.startswith("test:"):
            p.error("--domains is required with a real libvirt (e.g. --domains 'none-*' to manage no guest)")
        args.domains = "*"
    config_path = write_config(work, args.uri, args.domains.split(","))
    state_path = work / "state.json"
    script = memcoord_command()
    cmd = [*script, "run", "--config", str(config_path), "--interval", "0.2"]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM")}
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_ticks(proc, state_path, args.ticks)
        print(f"memcoord run, {args.uri}, pid {proc.pid}")
        print(memory_line(f"after {ticks(state_path)} ticks", proc.pid))
        for _ in range(args.reloads):
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.3)
        if args.reloads:
            wait_ticks(proc, state_path, ticks(state_path) + 5)
            print(memory_line(f"after {args.reloads} reloads, {ticks(state_path)} ticks", proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    if proc.returncode != 0:
        print(err.decode(), file=sys.stderr)
        print(f"memcoord exited with {proc.returncode}", file=sys.stderr)
        return 1
    if args.modules:
        state_path.unlink(missing_ok=True)
        modules = loaded_modules(["-m", "memcoord.cli", *cmd[len(script) :]], env, state_path)
        heavy = [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules)]
        print(f"modules imported by the first ticks: {len(modules)}; heavy ones: {', '.join(heavy) or 'none'}")
    if args.breakdown:
        print("RSS of a fresh interpreter importing what the daemon imports, part by part (MiB):")
        before: dict[str, int] = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        for label, kib in breakdown():
            print(
                f"  {kib['VmRSS'] / 1024:5.1f}  +{(kib['VmRSS'] - before['VmRSS']) / 1024:4.1f} "
                f"(anon +{(kib['RssAnon'] - before['RssAnon']) / 1024:4.1f}, "
                f"file +{(kib['RssFile'] - before['RssFile']) / 1024:4.1f})  {label}"
            )
            before = kib
    return 0


if __name__ == "__main__":
    sys.exit(main())
