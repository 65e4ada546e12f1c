"""The Debian packages, each on a fresh root of its release with real systemd in nspawn and no network: Debian 12
(systemd 252; dh-virtualenv) and Debian 13 (systemd 257; pybuild on Debian's python3 libraries, Python 3.13).
For each: lintian, install, start, the journal catalog, man pages, completion, reload with a broken file, upgrade
from the previous build keeping the admin's config byte for byte, the policy on the release's Python, remove,
purge.

Each release's package is built once for the module the way an admin builds it: `packaging/build-deb` (what
`make deb` runs) here for Debian 12, `--release trixie` (`make deb RELEASE=trixie`) in a root of Debian 13, the
same root the tests boot (lab/debroot.py: one debootstrap per release). The previous version is that package
repacked with a lower version (PREVIOUS), so the upgrade runs the package's own maintainer scripts both ways.
The container has only a loopback interface and the package's dependencies preinstalled (as on a KVM host); the
host's libvirt socket is bound in (the roots have no libvirt-daemon-system, whose sockets would take it over), so
`systemctl start` reaches the real libvirtd. The config the tests write manages no domain of the shared host and
is in dry run. Run it under the lab lock: flock /tmp/memcoord-lab.lock .venv/bin/pytest tests/system/test_deb.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import debroot
from lab.libvirtd import ensure_libvirtd
from memcoord.core.model import Action
from memcoord.daemon.journal import LIFECYCLE_IDS
from tests.helpers.container import CACHE, Container
from tests.helpers.system import AS_ROOT, AS_ROOT_DROP_IN, REPO, UNIT, record, system_prereqs, wait_until

pytestmark = pytest.mark.system

PREVIOUS = "~systest0"  # appended to the package's version: lower than it, whatever it is
# The admin's edit before trying it: only guests that do not exist on the test host, decisions logged, not acted on.
LOCAL_CONFIG = """\
# edited by the admin
[libvirt]
domains = ["mcdeb-none-*"]

[loop]
dry_run = true
"""
# Recommends: libvirt-daemon-system is on every KVM host; this root has the libvirt socket but not the daemon
# package, and no network to fetch it, so the recommendation is declined as on a host managing a remote URI.
APT_INSTALL = "cd /root && apt-get install -y --no-install-recommends"
SCENARIO = "scenarios/course-1-one-hog.toml"


@dataclass(frozen=True)
class Release:
    """What differs between the two packages, as an admin would find it on the host."""

    name: str
    root: list[str]  # the root's packages (lab/debroot.py)
    systemd: int
    python: str  # major.minor of the release's python3
    unit: str  # where the package's unit lives
    code: str  # the package's memcoord: a venv, or the system's dist-packages
    interpreter: str  # the Python that runs /usr/bin/memcoord
    build_args: tuple[str, ...]  # packaging/build-deb's arguments


RELEASES = {
    "bookworm": Release(
        "bookworm",
        debroot.BOOKWORM,
        252,
        "3.11",
        "/lib/systemd/system/memcoord.service",
        "/opt/venvs/memcoord",
        "/opt/venvs/memcoord/bin/python3",
        ("--install-build-deps",),
    ),
    "trixie": Release(
        "trixie",
        debroot.TRIXIE,
        257,
        "3.13",
        "/usr/lib/systemd/system/memcoord.service",
        "/usr/lib/python3/dist-packages/memcoord",
        "/usr/bin/python3",
        ("--release", "trixie"),
    ),
}
# Every Debian 13 runtime dependency is a Debian package, declared (not only present in the root).
TRIXIE_DEPENDS = {p for p in debroot.TRIXIE_RUNTIME if p.startswith("python3-")}


@dataclass(frozen=True)
class Deb:
    path: Path
    version: str
    build_s: float

    @property
    def size_kib(self) -> int:
        return self.path.stat().st_size // 1024


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def build(out: Path, release: Release) -> Deb:
    started = time.monotonic()
    r = subprocess.run(
        [str(REPO / "packaging" / "build-deb"), *release.build_args, str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert r.returncode == 0, f"build-deb failed:\n{r.stdout}\n{r.stderr}"
    built = Path(r.stdout.strip().splitlines()[-1].split(":")[0])
    assert built.exists(), r.stdout
    return Deb(built, field(built, "Version"), time.monotonic() - started)


def repack(deb: Deb, version: str, work: Path) -> Deb:
    """The same package under another version (an earlier build of it, for the upgrade)."""
    tree = work / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb.path), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.MULTILINE))
    out = work / deb.path.name.replace(deb.version, version)
    subprocess.run(["dpkg-deb", "-b", str(tree), str(out)], check=True, capture_output=True)
    shutil.rmtree(tree)
    return Deb(out, version, 0.0)


@pytest.fixture(scope="module", params=list(RELEASES))
def release(request: pytest.FixtureRequest) -> Release:
    return RELEASES[request.param]


@pytest.fixture(scope="module")
def debs(release: Release, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Deb]:
    why = system_prereqs()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp(f"debs-{release.name}")
    current = build(out, release)
    record(f"deb_{release.name}_size_kib", current.size_kib)
    record(f"deb_{release.name}_build_s", round(current.build_s, 1))
    return {"previous": repack(current, current.version + PREVIOUS, out), "current": current}


@pytest.fixture(scope="module")
def ct(release: Release, debs: dict[str, Deb]) -> Iterator[Container]:
    """A fresh root of the release, booted with only a loopback interface, the two packages in /root."""
    ensure_libvirtd()
    c = Container(
        f"mcdeb-{release.name}{os.getpid()}",
        CACHE / f"deb-{release.name}-{os.getpid()}",
        packages=release.root,
        release=release.name,
    )
    try:
        c.prepare(REPO)
        for deb in debs.values():
            shutil.copy(deb.path, c.root / "root" / deb.path.name)
        c.boot(private_network=True)
        yield c
    finally:
        c.shutdown()
        c.remove()


def installed_version(c: Container) -> str:
    return c.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "memcoord"]).stdout


def exists(c: Container, path: str) -> bool:
    return c.run(["test", "-e", path], check=False).returncode == 0


def catalog_ids(c: Container) -> set[str]:
    """The MESSAGE_IDs of memcoord's entries in the container's journal catalog."""
    out = c.run(["journalctl", "--list-catalog"]).stdout
    return {line.split()[0] for line in out.splitlines() if " memcoord: " in line}


def test_0_lintian_no_errors_no_warnings_every_override_explained(release: Release, debs: dict[str, Deb]) -> None:
    """Debian 12's lintian on each package: nothing at warning or above; an override has the reason above it."""
    deb = debs["current"].path
    # (Not with --show-overrides: lintian 2.116 then fails on overridden tags too.)
    r = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    tags = [line for line in r.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert not tags, tags
    overrides = subprocess.run(
        f"dpkg-deb --fsys-tarfile {deb} | tar -xOf - ./usr/share/lintian/overrides/memcoord",
        shell=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    reason = False  # a comment above an override, or above the run of overrides it belongs to
    for line in overrides:
        if line.startswith("# "):
            reason = True
        elif not line.strip():
            reason = False
        else:
            assert reason, f"override without a reason above it: {line}"
    record(f"deb_{release.name}_lintian_overrides", sum(1 for x in overrides if x.strip() and x[0] != "#"))


def test_1_no_network_in_the_container(ct: Container, release: Release) -> None:
    interfaces = ct.run(["ls", "/sys/class/net"]).stdout.split()
    assert interfaces == ["lo"], interfaces
    r = ct.run(["python3", "-c", "import socket; socket.create_connection(('deb.debian.org', 80), 5)"], check=False)
    assert r.returncode != 0, "the container reached the network"
    assert ct.run(["systemctl", "--version"]).stdout.startswith(f"systemd {release.systemd} ")


def test_2_previous_installs_offline_unit_not_enabled(ct: Container, release: Release, debs: dict[str, Deb]) -> None:
    """apt installs the package from the file alone; the unit is loaded but neither enabled nor started."""
    started = time.monotonic()
    # The ./ path, as an admin types it in the directory holding the file.
    r = ct.sh(f"{APT_INSTALL} ./{debs['previous'].path.name}", check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    record(f"deb_{release.name}_install_s", round(time.monotonic() - started, 1))
    assert installed_version(ct) == f"install ok installed {debs['previous'].version}"
    props = ct.show(UNIT, "LoadState", "UnitFileState", "ActiveState", "FragmentPath", "Documentation", "User")
    assert props["LoadState"] == "loaded" and props["FragmentPath"] == release.unit, props
    # The unit's user, made by the postinst; this root has no libvirt group (no libvirt-daemon-system): it says so.
    assert props["User"] == "memcoord", props
    assert ct.run(["getent", "passwd", "memcoord"]).stdout.startswith("memcoord:"), "no user memcoord"
    assert "no group libvirt" in r.stdout + r.stderr, r.stdout + r.stderr
    assert props["UnitFileState"] == "disabled" and props["ActiveState"] == "inactive", props
    assert props["Documentation"] == '"man:memcoord(8)" "man:memcoord.toml(5)"', props
    # Where the code and its libraries come from: Debian's bindings always; pydantic 2 from the venv on Debian 12,
    # from Debian on 13. The release's own Python runs it.
    probe = (
        "import json, sys, libvirt, systemd, pydantic, memcoord; print(json.dumps({'python': '%d.%d' %"
        " sys.version_info[:2], 'libvirt': libvirt.__file__, 'pydantic': pydantic.__file__, 'pydantic_version':"
        " pydantic.VERSION, 'memcoord': memcoord.__file__}))"
    )
    where = json.loads(ct.run([release.interpreter, "-c", probe]).stdout)
    assert where["python"] == release.python, where
    assert where["libvirt"].startswith("/usr/lib/python3/dist-packages/"), where
    assert where["pydantic_version"].startswith("2."), where
    assert where["memcoord"].startswith(release.code + "/"), where
    pydantic_home = f"{release.code}/lib/" if release.name == "bookworm" else "/usr/lib/python3/dist-packages/"
    assert where["pydantic"].startswith(pydantic_home), where
    # dh_python3 writes "#! /usr/bin/python3" (a blank after #!, which the kernel skips); the venv's has none.
    shebang = ct.run(["head", "-1", "/usr/bin/memcoord"]).stdout.strip()
    assert shebang.replace("#! ", "#!").removesuffix("3") == f"#!{release.interpreter}".removesuffix("3"), shebang
    if release.name == "trixie":
        depends = {d.split()[0] for d in field(debs["current"].path, "Depends").split(", ")}
        assert depends >= TRIXIE_DEPENDS, TRIXIE_DEPENDS - depends
        assert field(debs["current"].path, "Architecture") == "all"
    assert ct.run(["memcoord", "check-config", "/etc/memcoord.toml"]).stdout == "/etc/memcoord.toml: OK\n"
    conffiles = ct.run(["dpkg-query", "-W", "-f=${Conffiles}", "memcoord"]).stdout
    assert "/etc/memcoord.toml" in conffiles, conffiles
    # systemd's trigger on /usr/lib/systemd/catalog ran journalctl --update-catalog: every memcoord entry is in.
    assert LIFECYCLE_IDS["started"] in catalog_ids(ct) and Action.GROW.message_id in catalog_ids(ct)


def test_3_start_with_the_admins_config(ct: Container) -> None:
    """The admin limits the domains and turns dry run on, then starts it: active, ticking, on the real libvirtd;
    `journalctl -x` explains its records from the catalog."""
    ct.write("/etc/memcoord.toml", LOCAL_CONFIG)
    # The host's shared libvirtd runs without polkit and lets only root write (test_systemd.py does the same).
    ct.run(["mkdir", "-p", str(Path(AS_ROOT_DROP_IN).parent)])
    ct.write(AS_ROOT_DROP_IN, AS_ROOT)
    ct.run(["systemctl", "daemon-reload"])
    ct.run(["systemctl", "start", UNIT])
    assert ct.show(UNIT, "ActiveState")["ActiveState"] == "active"

    def ticking() -> bool:
        r = ct.run(["memcoord", "status", "--json"], check=False)
        view = json.loads(r.stdout) if r.returncode == 0 else {}
        return view.get("ticks", 0) >= 2 and view.get("hypervisor_ok") is True

    assert wait_until(ticking, 30), ct.run(["journalctl", "-u", UNIT, "--no-pager"]).stdout[-3000:]
    status = ct.show(UNIT, "StatusText")["StatusText"]
    assert "waiting for libvirt" not in status, status
    explained = ct.run(["journalctl", "-x", "-u", UNIT, f"MESSAGE_ID={LIFECYCLE_IDS['started']}", "--no-pager"]).stdout
    assert "memcoord starting" in explained and "Subject: Daemon started" in explained, explained
    assert "Defined-By: memcoord" in explained and "Support: man:memcoord(8)" in explained, explained


def test_4_reload_with_a_broken_file_fails_and_keeps_running(ct: Container) -> None:
    """The package's unit checks the file (its ExecReload runs check-config) before telling the daemon."""
    pid = ct.show(UNIT, "MainPID")["MainPID"]
    ct.write("/etc/memcoord.toml", LOCAL_CONFIG + "\n[guest]\nstarving_mib = -5\n")
    r = ct.run(["systemctl", "reload", UNIT], check=False)
    assert r.returncode != 0, r
    assert ct.show(UNIT, "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": pid}
    log = ct.run(["journalctl", "-u", UNIT, "--no-pager", "-n", "30"]).stdout
    assert "/etc/memcoord.toml: guest.starving_mib = -5" in log, log
    running = ct.run(["memcoord", "print-config", "--running"]).stdout
    assert "starving_mib = 150" in running and '"mcdeb-none-*"' in running, running
    ct.write("/etc/memcoord.toml", LOCAL_CONFIG)
    ct.run(["systemctl", "reload", UNIT])
    reloaded = ["journalctl", "-u", UNIT, f"MESSAGE_ID={LIFECYCLE_IDS['reload-ok']}", "-o", "cat", "--no-pager"]
    assert wait_until(lambda: "config reloaded" in ct.run(reloaded).stdout, 15), ct.run(reloaded).stdout
    assert ct.show(UNIT, "MainPID")["MainPID"] == pid


def test_5_upgrade_keeps_the_edited_config_and_restarts(ct: Container, debs: dict[str, Deb]) -> None:
    old_pid = ct.show(UNIT, "MainPID")["MainPID"]
    r = ct.sh(f"{APT_INSTALL} ./{debs['current'].path.name}", check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert installed_version(ct) == f"install ok installed {debs['current'].version}"
    assert ct.run(["cat", "/etc/memcoord.toml"]).stdout == LOCAL_CONFIG
    assert not exists(ct, "/etc/memcoord.toml.dpkg-new") and not exists(ct, "/etc/memcoord.toml.dpkg-dist")
    # A running service is restarted on the new code; still not enabled.
    props = ct.show(UNIT, "ActiveState", "MainPID", "UnitFileState")
    assert props["ActiveState"] == "active" and props["MainPID"] not in ("0", old_pid), props
    assert props["UnitFileState"] == "disabled", props
    upstream = debs["current"].version.split("~")[0]
    assert ct.run(["memcoord", "--version"]).stdout.strip() == f"memcoord {upstream}"


def test_6_man_pages_and_completion(ct: Container) -> None:
    env = ["env", "MANWIDTH=100", "MAN_KEEP_STDERR=1"]
    for args, title in ((["memcoord"], "MEMCOORD(8)"), (["5", "memcoord.toml"], "MEMCOORD.TOML(5)")):
        r = ct.run([*env, "man", "--warnings", "-P", "cat", *args], check=False)
        assert r.returncode == 0 and title in r.stdout, r.stdout[:500] + r.stderr
        assert r.stderr == "", r.stderr
    page = ct.run([*env, "man", "-P", "cat", "memcoord"]).stdout
    for command in ("check-config", "print-config", "status"):
        assert command in page, command
    bash = (
        "source /usr/share/bash-completion/completions/memcoord; complete -p memcoord; "
        'COMP_WORDS=(memcoord chec); COMP_CWORD=1; _memcoord; echo "${COMPREPLY[@]}"'
    )
    out = ct.run(["bash", "--norc", "-c", bash]).stdout.splitlines()
    assert out == ["complete -F _memcoord memcoord", "check-config"], out
    shared = ct.run(["ls", "/usr/share/memcoord/prometheus", "/usr/share/memcoord/systemd"]).stdout
    for name in ("memcoord.rules.yml", "grafana-dashboard.json", "scrape-config.yml", "metrics.conf"):
        assert name in shared, shared
    # The opt-in make-room hook, ready for the admin's link into /etc/libvirt/hooks/qemu.d.
    assert ct.run(["test", "-x", "/usr/share/memcoord/libvirt-hook/memcoord"], check=False).returncode == 0


def test_7_the_policy_runs_the_same_on_the_releases_python(ct: Container) -> None:
    """The installed command simulates an acceptance scenario on the release's Python exactly as the tests'
    Python does here: the policy, the simulator and the report, line for line."""
    args = ["simulate", f"/root/memcoord/{SCENARIO}", "--duration", "120"]
    there = ct.run(["memcoord", *args]).stdout
    here = subprocess.run(
        [sys.executable, "-m", "memcoord.cli", *args[:1], str(REPO / SCENARIO), *args[2:]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "OOM kills" in there and there == here, there + "\n---\n" + here


def test_8_remove_keeps_the_config(ct: Container, release: Release) -> None:
    ct.run(["rm", "-rf", str(Path(AS_ROOT_DROP_IN).parent)])  # test_3's drop-in, not the package's
    r = ct.run(["apt-get", "remove", "-y", "memcoord"], check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ct.run(["dpkg-query", "-W", "-f=${Status}", "memcoord"]).stdout == "deinstall ok config-files"
    assert ct.run(["cat", "/etc/memcoord.toml"]).stdout == LOCAL_CONFIG
    assert not exists(ct, "/usr/bin/memcoord") and not exists(ct, release.code)
    assert ct.show(UNIT, "LoadState")["LoadState"] == "not-found"
    # Stopped before its files went: no memcoord process left.
    assert ct.run(["pgrep", "-f", "bin/memcoord run"], check=False).returncode == 1
    # The catalog was rebuilt without memcoord's entries.
    assert catalog_ids(ct) == set()


def test_9_purge_removes_config_code_and_state(ct: Container, release: Release) -> None:
    r = ct.run(["apt-get", "purge", "-y", "memcoord"], check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ct.run(["dpkg-query", "-W", "memcoord"], check=False).returncode != 0
    for path in ("/etc/memcoord.toml", release.code, "/var/lib/memcoord", "/run/memcoord"):
        assert not exists(ct, path), path
