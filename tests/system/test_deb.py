"""The Debian package on a fresh Debian 12 with systemd 252 (nspawn) and no network: install, start, man pages,
completion, reload with a broken file, upgrade from the previous build keeping the admin's config, remove, purge.

Two packages are built once for the module with `packaging/build-deb` (what `make deb` runs), from a copy of the
tree: the previous one (version 0.3.0~systest0, lower than any release of 0.3.0) and this tree's. The container
has only a loopback interface; the host's libvirt socket is bound in, so `systemctl start` reaches the real
libvirtd (run under the QEMU lock: flock /tmp/memcoord-qemu.lock ...). The config the test writes manages no
domain of the shared host and is in dry run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.libvirtd import ensure_libvirtd
from tests.helpers.container import CACHE, Container
from tests.helpers.system import (
    AS_ROOT,
    AS_ROOT_DROP_IN,
    REPO,
    UNIT,
    record,
    system_prereqs,
    wait_for_libvirtd,
    wait_until,
)

pytestmark = pytest.mark.system

PREVIOUS_VERSION = "0.3.0~systest0"
VENV = "/opt/venvs/memcoord"
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


@dataclass(frozen=True)
class Deb:
    path: Path
    version: str
    build_s: float

    @property
    def size_kib(self) -> int:
        return self.path.stat().st_size // 1024


def build_deb(out: Path, version: str | None) -> Deb:
    env = dict(os.environ)
    env.pop("MEMCOORD_DEB_VERSION", None)
    if version:
        env["MEMCOORD_DEB_VERSION"] = version
    started = time.monotonic()
    r = subprocess.run(
        [str(REPO / "packaging" / "build-deb"), str(out)], env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, f"build-deb failed:\n{r.stdout}\n{r.stderr}"
    built = Path(r.stdout.strip().splitlines()[-1].split(":")[0])
    assert built.exists(), r.stdout
    info = subprocess.run(["dpkg-deb", "-f", str(built), "Version"], capture_output=True, text=True, check=True)
    return Deb(built, info.stdout.strip(), time.monotonic() - started)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Deb]:
    why = system_prereqs()
    if why:
        pytest.skip(why)
    subprocess.run(["make", "-C", str(REPO), "deb-deps"], check=True, capture_output=True, timeout=600)
    out = tmp_path_factory.mktemp("debs")
    previous = build_deb(out, PREVIOUS_VERSION)
    current = build_deb(out, None)
    record("deb_size_kib", current.size_kib)
    record("deb_build_s", round(current.build_s, 1))
    return {"previous": previous, "current": current}


@pytest.fixture(scope="module")
def ct(debs: dict[str, Deb]) -> Iterator[Container]:
    """A fresh Debian 12 root, booted with only a loopback interface, the two packages in /root."""
    ensure_libvirtd()
    wait_for_libvirtd()
    c = Container(f"mcdeb-ct{os.getpid()}", CACHE / f"deb-{os.getpid()}")
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


def test_1_no_network_in_the_container(ct: Container) -> None:
    interfaces = ct.run(["ls", "/sys/class/net"]).stdout.split()
    assert interfaces == ["lo"], interfaces
    r = ct.run(["python3", "-c", "import socket; socket.create_connection(('deb.debian.org', 80), 5)"], check=False)
    assert r.returncode != 0, "the container reached the network"


def test_2_previous_installs_offline_unit_not_enabled(ct: Container, debs: dict[str, Deb]) -> None:
    """apt installs the package from the file alone; the unit is loaded but neither enabled nor started."""
    started = time.monotonic()
    # The ./ path, as an admin types it in the directory holding the file.
    r = ct.sh(f"{APT_INSTALL} ./{debs['previous'].path.name}", check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    record("deb_install_s", round(time.monotonic() - started, 1))
    assert installed_version(ct) == f"install ok installed {PREVIOUS_VERSION}"
    props = ct.show(UNIT, "LoadState", "UnitFileState", "ActiveState", "FragmentPath", "Documentation", "User")
    assert props["LoadState"] == "loaded" and props["FragmentPath"] == "/lib/systemd/system/memcoord.service", props
    # The unit's user, made by the postinst; this root has no libvirt group (no libvirt-daemon-system): it says so.
    assert props["User"] == "memcoord", props
    assert ct.run(["getent", "passwd", "memcoord"]).stdout.startswith("memcoord:"), "no user memcoord"
    assert "no group libvirt" in r.stdout + r.stderr, r.stdout + r.stderr
    assert props["UnitFileState"] == "disabled" and props["ActiveState"] == "inactive", props
    assert props["Documentation"] == '"man:memcoord(8)" "man:memcoord.toml(5)"', props
    # Debian's bindings through the system site packages; pydantic 2 from the venv.
    where = ct.run(
        [f"{VENV}/bin/python3", "-c", "import libvirt, systemd, pydantic; print(libvirt.__file__, pydantic.VERSION)"]
    ).stdout.split()
    assert where[0].startswith("/usr/lib/python3/dist-packages/") and where[1].startswith("2."), where
    assert ct.run(["readlink", "/usr/bin/memcoord"]).stdout.strip() == f"{VENV}/bin/memcoord"
    assert ct.run(["memcoord", "check-config", "/etc/memcoord.toml"]).stdout == "/etc/memcoord.toml: OK\n"
    conffiles = ct.run(["dpkg-query", "-W", "-f=${Conffiles}", "memcoord"]).stdout
    assert "/etc/memcoord.toml" in conffiles, conffiles


def test_3_start_with_the_admins_config(ct: Container) -> None:
    """The admin limits the domains and turns dry run on, then starts it: active, ticking, on the real libvirtd."""
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


def test_4_reload_with_a_broken_file_fails_and_keeps_running(ct: Container) -> None:
    """The package's unit checks the file (its ExecReload runs the venv's check-config) before telling the daemon."""
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
    version = ct.run(["memcoord", "--version"]).stdout.strip()
    assert version == f"memcoord {debs['current'].version}", version


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


def test_7_remove_keeps_the_config(ct: Container) -> None:
    ct.run(["rm", "-rf", str(Path(AS_ROOT_DROP_IN).parent)])  # test_3's drop-in, not the package's
    r = ct.run(["apt-get", "remove", "-y", "memcoord"], check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ct.run(["dpkg-query", "-W", "-f=${Status}", "memcoord"]).stdout == "deinstall ok config-files"
    assert ct.run(["cat", "/etc/memcoord.toml"]).stdout == LOCAL_CONFIG
    assert not exists(ct, "/usr/bin/memcoord") and not exists(ct, VENV)
    assert ct.show(UNIT, "LoadState")["LoadState"] == "not-found"
    # Stopped before its files went: no memcoord process left.
    assert ct.run(["pgrep", "-f", f"{VENV}/bin/memcoord"], check=False).returncode == 1


def test_8_purge_removes_config_venv_and_state(ct: Container) -> None:
    r = ct.run(["apt-get", "purge", "-y", "memcoord"], check=False, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ct.run(["dpkg-query", "-W", "memcoord"], check=False).returncode != 0
    for path in ("/etc/memcoord.toml", VENV, "/var/lib/memcoord", "/run/memcoord"):
        assert not exists(ct, path), path
