"""The shipped unit on a stock Debian 12 libvirt host, as the unprivileged user it names (User=memcoord).

The container is Debian 12 with libvirt-daemon-system, polkitd and dbus, booted with systemd, running its own
libvirtd as Debian ships it: socket-activated, the read-write socket mode 0666 with access decided by polkit
(auth_unix_rw defaults to polkit), and libvirt's polkit rule (60-libvirt.rules) granting that access to the group
libvirt. README's `make install` installs memcoord and creates the user, as the package does. Nothing is added to
libvirt's or polkit's configuration. No guest boots (the container has no QEMU): read-write access is shown by a
write call (define and undefine a network), and memcoord ticks against that libvirtd.

The other system tests reach the host's shared libvirtd, which runs without systemd and polkit; it gives
read-write access to root only, so they run the unit as root (conftest.AS_ROOT).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest

from tests.helpers.container import CACHE, LIBVIRT_HOST_PACKAGES, Container, exposure
from tests.helpers.system import AS_ROOT, REPO, UNIT, record, system_prereqs, wait_until

pytestmark = pytest.mark.system

URI = "qemu:///system"
# A user outside the group libvirt: the control that shows polkit is what lets memcoord in.
OUTSIDER = "mcoutsider"
PROBE_NET = "<network><name>mcpriv-probe</name><bridge name='mcprobe0'/></network>"
# README's drop-in for a host without [metrics] and [status] group.
OFFLINE = """\
[Service]
PrivateNetwork=yes
RestrictAddressFamilies=AF_UNIX
CapabilityBoundingSet=
AmbientCapabilities=
PrivateUsers=yes
SystemCallFilter=~@chown
"""
CONFIG = """\
[libvirt]
uri = "qemu:///system"

[loop]
interval_s = 1.0

[status]
path = "/run/memcoord/state.json"
group = "adm"
"""


@pytest.fixture(scope="module")
def host() -> Iterator[Container]:
    """A booted stock libvirt host with memcoord installed by `make install`, and a user outside group libvirt."""
    why = system_prereqs()
    if why:
        pytest.skip(why)
    ct = Container(
        f"mcpriv-ct{os.getpid()}",
        CACHE / f"run-priv-{os.getpid()}",
        packages=LIBVIRT_HOST_PACKAGES,
        bind_host_libvirt=False,
    )
    try:
        ct.prepare(REPO)
        ct.boot()
        r = ct.sh("cd /root/memcoord && make install", check=False, timeout=600)
        assert r.returncode == 0, f"make install failed in the container:\n{r.stdout}\n{r.stderr}"
        ct.sh(f"adduser --quiet --system --group --no-create-home --home /nonexistent {OUTSIDER}")
        ct.write("/etc/memcoord.toml", CONFIG)
        yield ct
    finally:
        ct.shutdown()
        ct.remove()


def as_user(ct: Container, user: str, script: str) -> tuple[int, str]:
    """Run a shell script as `user` inside the container: (exit status, stdout + stderr)."""
    r = ct.run(["runuser", "-u", user, "--", "sh", "-c", script], check=False)
    return r.returncode, r.stdout + r.stderr


def state(ct: Container) -> dict[str, object]:
    """memcoord's state file, read as root ({} while there is none)."""
    r = ct.run(["cat", "/run/memcoord/state.json"], check=False)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def test_stock_libvirt_guards_read_write_with_polkit(host: Container) -> None:
    """What a stock Debian 12 libvirt gives: a socket anyone may open, polkit deciding read-write access, and the
    group libvirt granted it by libvirt's rule; make install put memcoord in that group."""
    assert host.run(["stat", "-c", "%U %G %a", "/run/libvirt/libvirt-sock"]).stdout.split() == ["root", "root", "666"]
    conf = host.run(["grep", "-E", "^[^#]*(auth_unix_rw|unix_sock)", "/etc/libvirt/libvirtd.conf"], check=False)
    assert conf.stdout == "", conf.stdout  # nothing changed from Debian's defaults
    rule = host.run(["cat", "/usr/share/polkit-1/rules.d/60-libvirt.rules"]).stdout
    assert 'action.id == "org.libvirt.unix.manage"' in rule and 'subject.isInGroup("libvirt")' in rule, rule
    groups = host.run(["id", "-nG", "memcoord"]).stdout.split()
    assert sorted(groups) == ["libvirt", "memcoord"], groups
    assert host.run(["getent", "passwd", "memcoord"]).stdout.split(":")[2] != "0"

    status, out = as_user(host, OUTSIDER, f"virsh -c {URI} list --all")
    assert status != 0 and "org.libvirt.unix.manage" in out, out
    status, out = as_user(host, OUTSIDER, f"virsh -r -c {URI} list --all")
    assert status == 0, out  # the socket is open to it; only read-write is refused


def test_libvirt_group_member_gets_read_write(host: Container) -> None:
    """As memcoord: `virsh -c qemu:///system list`, and a write call (define and undefine a network)."""
    status, out = as_user(host, "memcoord", f"virsh -c {URI} list --all")
    assert status == 0, out
    host.write("/tmp/mcpriv-probe.xml", PROBE_NET + "\n")
    status, out = as_user(
        host, "memcoord", f"virsh -c {URI} net-define /tmp/mcpriv-probe.xml && virsh -c {URI} net-undefine mcpriv-probe"
    )
    assert status == 0 and "mcpriv-probe defined" in out and "mcpriv-probe has been undefined" in out, out
    status, out = as_user(host, OUTSIDER, f"virsh -c {URI} net-define /tmp/mcpriv-probe.xml")
    assert status != 0 and "org.libvirt.unix.manage" in out, out


def test_unit_runs_as_memcoord_and_ticks(host: Container) -> None:
    """The installed unit, without a drop-in, starts as memcoord (groups memcoord and libvirt), reaches libvirtd
    read-write and ticks; [status] group still works (CAP_CHOWN)."""
    assert host.show(UNIT, "DropInPaths")["DropInPaths"] == ""
    host.run(["systemctl", "restart", UNIT])
    try:
        pid = int(host.show(UNIT, "MainPID")["MainPID"])
        who = host.run(["ps", "-o", "user=,group=,supgrp=", "-p", str(pid)]).stdout.split()
        assert who[:2] == ["memcoord", "memcoord"] and sorted(who[2].split(",")) == ["libvirt", "memcoord"], who
        first = wait_until(lambda: state(host).get("ticks", 0) >= 1 and state(host), 15)
        assert first and first["hypervisor_ok"] is True, first
        time.sleep(3)
        later = state(host)
        assert later["ticks"] >= first["ticks"] + 2 and later["hypervisor_ok"] is True, (first, later)
        assert later["pid"] == pid
        mode = host.run(["stat", "-c", "%U %G %a", "/run/memcoord/state.json"]).stdout.split()
        assert mode == ["memcoord", "adm", "640"], mode
        journal = host.run(["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]).stdout
        assert "first tick done: 0 managed domains" in journal, journal
        assert "lost the hypervisor" not in journal and "authentication" not in journal, journal
        assert host.show(UNIT, "NRestarts", "ActiveState") == {"NRestarts": "0", "ActiveState": "active"}
    finally:
        host.run(["systemctl", "stop", UNIT], check=False)


def test_unit_as_a_user_outside_group_libvirt_never_connects(host: Container) -> None:
    """The control: the same unit as a user outside the group never gets a tick; polkit refuses it."""
    path = with_drop_in(host, "outsider", f"[Service]\nUser={OUTSIDER}\nGroup={OUTSIDER}\n")
    try:
        host.run(["systemctl", "restart", UNIT])
        time.sleep(5)
        st = state(host)
        assert st["ticks"] == 0 and st["hypervisor_ok"] is not True, st
        journal = host.run(["journalctl", "-u", UNIT, "-o", "cat", "--no-pager", "-n", "20"]).stdout
        assert "org.libvirt.unix.manage" in journal, journal
    finally:
        without_drop_in(host, path)


def with_drop_in(ct: Container, name: str, text: str) -> str:
    """Install a drop-in for the unit and reload systemd; returns its path."""
    path = f"/etc/systemd/system/{UNIT}.d/{name}.conf"
    ct.run(["mkdir", "-p", f"/etc/systemd/system/{UNIT}.d"])
    ct.write(path, text)
    ct.run(["systemctl", "daemon-reload"])
    return path


def without_drop_in(ct: Container, path: str) -> None:
    ct.run(["systemctl", "stop", UNIT], check=False)
    ct.run(["rm", "-f", path])
    ct.run(["systemctl", "daemon-reload"])


def test_dynamic_user_with_supplementary_group_libvirt_is_refused(host: Container) -> None:
    """Why the unit needs a real user in /etc/group's libvirt: DynamicUser= with SupplementaryGroups=libvirt puts
    the process in the group, but polkit looks the user's groups up in the user database, where a dynamic user is
    in none, so the rule does not match and read-write access is refused."""
    path = with_drop_in(
        host, "dynamic", "[Service]\nUser=memcoord-dynamic\nGroup=\nDynamicUser=yes\nSupplementaryGroups=libvirt\n"
    )
    try:
        host.run(["systemctl", "restart", UNIT])
        pid = int(host.show(UNIT, "MainPID")["MainPID"])
        supgrp = host.run(["ps", "-o", "supgrp=", "-p", str(pid)]).stdout
        assert "libvirt" in supgrp.split(","), supgrp  # the process is in the group...
        time.sleep(5)
        st = state(host)
        assert st["ticks"] == 0 and st["hypervisor_ok"] is not True, st  # ...and still refused
        journal = host.run(["journalctl", "-u", UNIT, "-o", "cat", "--no-pager", "-n", "20"]).stdout
        assert "org.libvirt.unix.manage" in journal, journal
    finally:
        without_drop_in(host, path)


def test_exposure_as_memcoord_below_as_root(host: Container) -> None:
    """`systemd-analyze security`: the shipped unit (as memcoord) against the same unit run as root."""
    shipped = exposure(host.run(["systemd-analyze", "security", UNIT, "--no-pager"]).stdout)
    path = with_drop_in(host, "as-root", AS_ROOT)
    try:
        as_root = exposure(host.run(["systemd-analyze", "security", UNIT, "--no-pager"]).stdout)
    finally:
        without_drop_in(host, path)
    record("exposure", shipped)
    record("exposure_same_unit_as_root", as_root)
    assert shipped < as_root, (shipped, as_root)
    assert shipped <= 1.5, shipped


def test_offline_drop_in_still_ticks(host: Container) -> None:
    """README's tightening for a host without metrics and status group: the unit still reaches libvirtd as memcoord
    and ticks; its exposure is recorded."""
    path = with_drop_in(host, "offline", OFFLINE)
    host.write("/etc/memcoord.toml", CONFIG.replace('group = "adm"', 'group = ""'))
    try:
        level = exposure(host.run(["systemd-analyze", "security", UNIT, "--no-pager"]).stdout)
        record("exposure_offline_drop_in", level)
        host.run(["systemctl", "restart", UNIT])
        assert wait_until(lambda: state(host).get("ticks", 0) >= 3, 15), state(host)
        assert state(host)["hypervisor_ok"] is True
        assert level < 1.5, level
    finally:
        without_drop_in(host, path)
        host.write("/etc/memcoord.toml", CONFIG)
