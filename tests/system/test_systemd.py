"""memcoord under a real systemd 252 (Debian 12 in systemd-nspawn), installed with README's `make install`, driving
real QEMU guests on the host's libvirtd: start, journal, reload, bad config, watchdog, stop, hardening, libvirtd
restart. Every check reads what an admin would: systemctl, journalctl, and libvirt for the guests' memory.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab.lab import Lab
from memcoord.daemon.journal import LIFECYCLE_IDS
from tests.helpers.container import Container, exposure
from tests.helpers.system import (
    AS_ROOT_DROP_IN,
    BASE_CONFIG,
    GROW_STEP_MIB,
    GUEST_START_MIB,
    REPO,
    STARVING_MIB,
    UNIT,
    Unit,
    on_lab,
    reconnect,
    record,
    reset_guests,
    set_memory_mib,
    stats,
    wait_for_libvirtd,
    wait_until,
)

pytestmark = pytest.mark.system


def unused_mib(lab: Lab, name: str) -> int:
    """The guest's unused memory (balloon.unused) in MiB."""
    return stats(lab)[name]["balloon.unused"] // 1024


def current_kib(lab: Lab, name: str) -> int:
    """balloon.current: the memory the guest has now, as libvirt reports it."""
    return stats(lab)[name]["balloon.current"]


def xml_current_kib(lab: Lab, name: str) -> int:
    """<currentMemory> of the live domain XML: the target setMemory last set."""
    xml = on_lab(lab, lambda: lab.guest(name).domain.XMLDesc(0))
    m = re.search(r"<currentMemory unit='KiB'>(\d+)</currentMemory>", xml)
    assert m, xml
    return int(m.group(1))


def starve(lab: Lab, name: str) -> None:
    """Make the guest starving: a hog holds all but (starving threshold - 40 MiB) of its unused memory."""
    hold = unused_mib(lab, name) - (STARVING_MIB - 40)
    lab.start_hog(name, "hold", size_mib=hold, page_us=20)


def actions(u: Unit, after: str, domain: str, action: str) -> list[dict[str, str]]:
    """memcoord's action records for one domain and kind after a cursor (journal field matches)."""
    return u.journal(after, f"MEMCOORD_DOMAIN={domain}", f"MEMCOORD_ACTION={action}")


def notifications(u: Unit, after: str, pid: int) -> list[str]:
    """The sd_notify messages PID 1 says it got from `pid` (logged at PID 1's debug level)."""
    prefix = f"{UNIT}: Got notification message from PID {pid} ("
    return [m.removeprefix(prefix) for m in u.messages(after) if m.startswith(prefix)]


def test_make_install_as_readme(container: Container) -> None:
    """README's `make install` put everything in place on a plain Debian 12 and systemd loaded the unit."""
    readme = (REPO / "README.md").read_text()
    assert "make install" in readme and "### For developers: `make install` from a clone" in readme
    ct = container
    record("make_install_s", round(ct.install_seconds, 1))  # type: ignore[attr-defined]
    assert ct.run(["readlink", "-f", "/usr/local/bin/memcoord"]).stdout.strip().startswith("/opt/memcoord/")
    assert ct.run(["/opt/memcoord/bin/python3", "-c", "import sys; print(sys.prefix)"]).stdout.strip() == (
        "/opt/memcoord"
    )
    # Debian's libvirt and systemd bindings, seen through --system-site-packages, not built from PyPI sources.
    where = ct.run(["/opt/memcoord/bin/python3", "-c", "import libvirt, systemd; print(libvirt.__file__)"]).stdout
    assert where.startswith("/usr/lib/python3/dist-packages/"), where
    assert ct.run(["memcoord", "check-config", "/etc/memcoord.toml"]).returncode == 0
    shipped = (REPO / "etc" / "memcoord.toml").read_text()
    assert ct.run(["cat", "/etc/memcoord.toml"]).stdout == shipped
    assert (
        ct.run(["cat", "/etc/systemd/system/memcoord.service"]).stdout
        == (REPO / "packaging" / "memcoord.service").read_text()
    )
    props = ct.show(UNIT, "LoadState", "NeedDaemonReload", "FragmentPath")
    assert props == {
        "LoadState": "loaded",
        "NeedDaemonReload": "no",
        "FragmentPath": "/etc/systemd/system/memcoord.service",
    }
    # Running it again (an upgrade) keeps the admin's config.
    ct.write("/etc/memcoord.toml", shipped + "\n# edited by the admin\n")
    ct.sh("cd /root/memcoord && make install", timeout=600)
    assert ct.run(["cat", "/etc/memcoord.toml"]).stdout.endswith("# edited by the admin\n")


def test_1_start_returns_after_ready(container: Container, lab: Lab) -> None:
    """`systemctl start` blocks until READY=1 (sent once the config is loaded and the loop runs, before the first
    tick); status then shows the STATUS= line of the ticks."""
    u = Unit(container)
    u.systemctl("stop", UNIT, check=False)
    reset_guests(lab)
    u.write_config(BASE_CONFIG)
    u.pid1_debug(True)
    try:
        cur = u.cursor()
        u.systemctl("start", UNIT)
        props = u.show("ActiveState", "SubState", "MainPID", "Type")
        ticking = wait_until(lambda: re.match(r"2 domains\b", u.show("StatusText")["StatusText"]), 15)
    finally:
        u.pid1_debug(False)
    assert props["Type"] == "notify"
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    status_text = u.show("StatusText")["StatusText"]
    assert ticking and re.match(r"2 domains\b.*host available [\d.]+ GiB", status_text), status_text
    # PID 1's own account (debug level): STATUS= waiting for the first tick, then READY=1, and only then
    # "Started"; the first tick's STATUS= follows.
    msgs = u.messages(cur)
    got = notifications(u, cur, int(props["MainPID"]))
    assert got and got[0].startswith("STATUS=waiting for libvirt (qemu:///system)") and "READY=1" in got[1], got
    assert any(n.startswith("STATUS=2 domains") for n in got[2:]), got
    ready_at = next(i for i, m in enumerate(msgs) if "Got notification" in m and "READY=1" in m)
    started_at = next(i for i, m in enumerate(msgs) if m.startswith("Started memcoord.service"))
    assert ready_at < started_at, msgs
    status = u.systemctl("status", UNIT, "--no-pager", "--lines=0")
    assert "Active: active (running)" in status, status
    assert re.search(r'Status: "2 domains\b.*host available [\d.]+ GiB, guard 1024 MiB', status), status


def test_1b_start_with_libvirtd_down_returns_at_once(container: Container) -> None:
    """libvirtd down at boot (its socket absent): `systemctl start` returns at once and the unit is active,
    waiting for libvirt, which STATUS and `memcoord status` say. Before, READY=1 waited for the first tick, so
    start blocked for the whole start timeout (90 s) and failed. The host's shared libvirtd is not touched: the
    unit's URI points at a socket no daemon listens on, which is what a stopped libvirtd leaves."""
    u = Unit(container)
    u.systemctl("stop", UNIT, check=False)
    u.write_config(BASE_CONFIG.replace('"qemu:///system"', '"qemu:///system?socket=/run/no-libvirtd/libvirt-sock"'))
    try:
        started = time.monotonic()
        u.systemctl("start", UNIT, timeout=30)
        took_s = time.monotonic() - started
        record("start_with_libvirtd_down_s", round(took_s, 1))
        props = u.show("ActiveState", "SubState", "StatusText")
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
        assert props["StatusText"].startswith("waiting for libvirt (qemu:///system?socket="), props
        assert took_s < 10, took_s
        status = container.run(["memcoord", "status"], check=False)
        assert "waiting for libvirt (qemu:///system?socket=" in status.stdout, (status.stdout, status.stderr)
        time.sleep(5)  # still active, not restarted by the watchdog or Restart=
        assert u.show("ActiveState", "NRestarts")["ActiveState"] == "active"
    finally:
        u.systemctl("stop", UNIT, check=False)
        u.write_config(BASE_CONFIG)


def test_2_journal_grow_record_matches_libvirt(unit: Unit, lab: Lab) -> None:
    """A starving guest is grown; the journal record's fields match what libvirt then reports."""
    cur = unit.cursor()
    unit.systemctl("restart", UNIT)
    pid = unit.main_pid()
    # (Filtered here: `journalctl -u X _PID=N` would OR N with the _PID=1 match -u adds for systemd's lines.)
    start = [e["MESSAGE"] for e in unit.journal(cur) if e.get("_PID") == str(pid)]
    assert start and start[0].startswith("memcoord starting: qemu:///system"), unit.messages(cur)
    name = "mcsys-1"
    before_kib = current_kib(lab, name)
    assert before_kib == GUEST_START_MIB * 1024
    starve(lab, name)
    assert wait_until(lambda: actions(unit, cur, name, "grow"), 90), unit.messages(cur)[-30:]
    # The hog stops at its size, so growth stops when the guest is no longer starving; wait for that.
    time.sleep(4)
    grows = actions(unit, cur, name, "grow")
    first, last = grows[0], grows[-1]
    assert int(first["MEMCOORD_FROM_KIB"]) == before_kib
    # At least a grow step; more when the guest's ramp needs it before memcoord can look again.
    assert int(first["MEMCOORD_TO_KIB"]) >= before_kib + GROW_STEP_MIB * 1024, first
    assert first["MESSAGE_ID"] and first["MEMCOORD_REASON"], first
    assert first["SYSLOG_IDENTIFIER"] == "memcoord" and first["_SYSTEMD_UNIT"] == UNIT
    for a, b in itertools.pairwise(grows):
        assert a["MEMCOORD_TO_KIB"] == b["MEMCOORD_FROM_KIB"], grows
    to_kib = int(last["MEMCOORD_TO_KIB"])
    assert xml_current_kib(lab, name) == to_kib
    assert wait_until(lambda: abs(current_kib(lab, name) - to_kib) <= 1024, 30), (current_kib(lab, name), to_kib)
    # The other guest was not starving and must not have been touched.
    assert unit.journal(cur, "MEMCOORD_DOMAIN=mcsys-2") == []


def test_3_reload_applies_new_threshold(unit: Unit, lab: Lab) -> None:
    """Edit a threshold, `systemctl reload`: same main PID, still active, new threshold in effect."""
    pid = unit.main_pid()
    name = "mcsys-2"
    unused = unused_mib(lab, name)
    cur = unit.cursor()
    time.sleep(3)
    assert actions(unit, cur, name, "grow") == [], "mcsys-2 grew before the reload"
    # (the fixture's reload just set STATUS to "config reloaded"; the next tick writes the full line)
    assert wait_until(lambda: "guard 1024 MiB" in unit.show("StatusText")["StatusText"], 15), unit.show("StatusText")

    raised = unused + 60  # mcsys-2 is starving under the new threshold only
    new = BASE_CONFIG.replace(f"starving_mib = {STARVING_MIB}", f"starving_mib = {raised}")
    new = new.replace("min_available_mib = 1024", "min_available_mib = 1000")
    unit.write_config(new)
    unit.pid1_debug(True)
    try:
        cur = unit.cursor()
        unit.systemctl("reload", UNIT)
        props = unit.show("ActiveState", "SubState", "MainPID")
        assert wait_until(lambda: actions(unit, cur, name, "grow"), 30), unit.messages(cur)[-30:]
    finally:
        unit.pid1_debug(False)
    assert props == {"ActiveState": "active", "SubState": "running", "MainPID": str(pid)}
    got = notifications(unit, cur, pid)
    reloading = [n for n in got if "RELOADING=1" in n]
    assert reloading and "MONOTONIC_USEC=" in reloading[0], got
    assert any("READY=1" in n for n in got[got.index(reloading[0]) :]), got
    assert "config reloaded from /etc/memcoord.toml" in unit.messages(cur)
    grow = actions(unit, cur, name, "grow")[0]
    assert int(grow["MEMCOORD_FROM_KIB"]) == GUEST_START_MIB * 1024
    assert wait_until(lambda: "guard 1000 MiB" in unit.show("StatusText")["StatusText"], 10)
    assert unit.main_pid() == pid
    # The reload is a journal record of its own kind, and the running daemon reports the new threshold.
    assert unit.journal(cur, f"MESSAGE_ID={LIFECYCLE_IDS['reload-ok']}"), unit.messages(cur)[-20:]
    running = unit.ct.run(["memcoord", "print-config", "--running"]).stdout
    assert f"starving_mib = {raised}" in running, running


def test_4_invalid_config(unit: Unit, lab: Lab) -> None:
    """Bad file on reload: `systemctl reload` fails (ExecReload checks the file first), the daemon keeps running
    its config, the key is named in the journal. A SIGHUP sent by hand: the daemon refuses the file itself, STATUS
    says so. Bad file at restart: exit 78, no restart loop. Fixed file: starts again."""
    pid = unit.main_pid()
    bad = BASE_CONFIG.replace(f"starving_mib = {STARVING_MIB}", 'starving_mib = "lots"')
    bad = bad.replace("min_available_mib = 1024", "min_available_mib = 900")
    unit.write_config(bad)
    cur = unit.cursor()
    r = container_run(unit, ["systemctl", "reload", UNIT])
    assert r.returncode != 0 and "memcoord.service" in r.stderr, (r.returncode, r.stderr)
    msgs = unit.wait_message(cur, "/etc/memcoord.toml: guest.starving_mib = 'lots'")
    assert any(m.startswith("Reload failed for") for m in msgs), msgs
    props = unit.show("ActiveState", "MainPID")
    assert props == {"ActiveState": "active", "MainPID": str(pid)}

    def status() -> str:
        return unit.show("StatusText")["StatusText"]

    # The daemon never got the signal: no reload note, and the guard is still 1024 (the bad file said 900).
    time.sleep(2)
    assert "reload failed" not in status() and "guard 1024 MiB" in status(), status()
    assert not any("reload failed" in m for m in unit.messages(cur)), unit.messages(cur)

    # A SIGHUP that bypasses ExecReload (kill -HUP by hand): the daemon checks the file itself and refuses it.
    cur = unit.cursor()
    unit.systemctl("kill", "--kill-who=main", "--signal=SIGHUP", UNIT)
    msgs = unit.wait_message(cur, "guest.starving_mib")
    assert any("reload failed" in m for m in msgs), msgs
    assert unit.show("ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": str(pid)}
    # The next tick's line keeps the note; the old config is the one running.
    assert wait_until(lambda: "reload failed" in status() and "domains" in status(), 10), status()
    assert "guard 1024 MiB" in status(), status()

    cur = unit.cursor()
    r = container_run(unit, ["systemctl", "restart", UNIT])
    assert r.returncode != 0
    props = unit.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode", "NRestarts")
    assert props["ActiveState"] == "failed" and props["Result"] == "exit-code", props
    assert props["ExecMainStatus"] == "78", props
    msgs = unit.messages(cur)
    assert any("status=78/CONFIG" in m for m in msgs), msgs
    assert any("guest.starving_mib" in m for m in msgs), msgs
    # RestartPreventExitStatus=78: no loop (RestartSec is 2 s).
    time.sleep(5)
    again = unit.show("ActiveState", "NRestarts")
    assert again == {"ActiveState": "failed", "NRestarts": props["NRestarts"]}, again

    unit.write_config(BASE_CONFIG)
    unit.systemctl("start", UNIT)
    assert unit.show("ActiveState")["ActiveState"] == "active"


def container_run(unit: Unit, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a command in the unit's container without failing on a non-zero exit."""
    return unit.ct.run(args, check=False)


def test_5_watchdog_restarts_hung_service(unit: Unit) -> None:
    """SIGSTOP the main process (a hung tick): systemd's watchdog kills it and Restart= brings it back."""
    props = unit.show("WatchdogUSec", "RestartUSec", "NRestarts", "MainPID")
    m = re.fullmatch(r"(\d+)s", props["WatchdogUSec"])
    assert m, props
    watchdog_s = int(m.group(1))
    restart_s = float(props["RestartUSec"].removesuffix("s"))
    pid = int(props["MainPID"])
    cur = unit.cursor()
    started = time.monotonic()
    unit.systemctl("kill", "--kill-who=main", "--signal=SIGSTOP", UNIT)

    def back() -> bool:
        p = unit.show("MainPID", "ActiveState", "SubState")
        return p["ActiveState"] == "active" and p["SubState"] == "running" and p["MainPID"] not in ("0", str(pid))

    margin_s = 15
    assert wait_until(back, watchdog_s + restart_s + margin_s, 0.5), unit.messages(cur)[-20:]
    took_s = time.monotonic() - started
    record("watchdog_restart_s", round(took_s, 1))
    record("watchdog_sec", watchdog_s)
    # Killed by the watchdog, not earlier by something else: at least (WatchdogSec - one tick interval).
    assert took_s >= watchdog_s - 2, took_s
    msgs = unit.messages(cur)
    assert any("Watchdog timeout" in m for m in msgs), msgs
    assert any("Failed with result 'watchdog'" in m for m in msgs), msgs
    assert int(unit.show("NRestarts")["NRestarts"]) == int(props["NRestarts"]) + 1


def test_6_stop_is_clean_and_leaves_guests_alone(unit: Unit, lab: Lab) -> None:
    """`systemctl stop`: STOPPING=1, exit 0, and no guest's memory changes because of the stop."""
    # One guest away from its start size, so a stop that "resets" guests would show.
    set_memory_mib(lab, "mcsys-2", 600)
    assert wait_until(lambda: abs(current_kib(lab, "mcsys-2") - 600 * 1024) <= 1024, 30)
    time.sleep(3)
    before = {n: (current_kib(lab, n), xml_current_kib(lab, n)) for n in lab.names}
    pid = unit.main_pid()
    unit.pid1_debug(True)
    try:
        cur = unit.cursor()
        unit.systemctl("stop", UNIT)
    finally:
        unit.pid1_debug(False)
    assert unit.show("ActiveState")["ActiveState"] == "inactive"
    # Exit status from PID 1's log: an inactive unit may be unloaded, and then `show` has no ExecMain* left.
    msgs = unit.messages(cur)
    assert any("STOPPING=1" in n for n in notifications(unit, cur, pid)), msgs
    assert any(m.startswith(f"{UNIT}: Main process exited, code=exited, status=0/SUCCESS") for m in msgs), msgs
    assert f"{UNIT}: Deactivated successfully." in msgs, msgs
    assert any(m.startswith("memcoord stopping after") for m in msgs), msgs
    time.sleep(3)
    after = {n: (current_kib(lab, n), xml_current_kib(lab, n)) for n in lab.names}
    assert after == before


def test_7_security_exposure(container: Container) -> None:
    """`systemd-analyze security` rates the unit tests 1-6 ran under (the shipped one, run as root for the host's
    libvirtd) at most 2.5; the shipped unit as it is, as its own user, is rated in test_unprivileged.py."""
    out = container.run(["systemd-analyze", "security", UNIT, "--no-pager"]).stdout
    level = exposure(out)
    record("exposure_as_root", level)
    assert level <= 2.5, out
    installed = container.run(["cat", "/etc/systemd/system/memcoord.service"]).stdout
    assert installed == (REPO / "packaging" / "memcoord.service").read_text()
    drop_ins = container.show(UNIT, "DropInPaths")["DropInPaths"]
    assert drop_ins == AS_ROOT_DROP_IN, drop_ins


def test_8_optional_features_work_in_the_sandbox(unit: Unit) -> None:
    """The hardening leaves room for what the config offers: [status] group (CAP_CHOWN), [metrics] on loopback
    (AF_INET), [timeline] under /var/lib/memcoord (StateDirectory=), and `memcoord status` reading the state."""
    port = 19000 + os.getpid() % 1000  # the container shares the host's loopback
    extra = f"""
[status]
path = "/run/memcoord/state.json"
group = "adm"

[metrics]
enabled = true
address = "127.0.0.1"
port = {port}

[timeline]
path = "/var/lib/memcoord/timeline.jsonl"
"""
    cur = unit.cursor()
    unit.write_config(BASE_CONFIG + extra)
    unit.systemctl("restart", UNIT)
    try:
        ct = unit.ct
        assert wait_until(
            lambda: ct.run(["test", "-s", "/var/lib/memcoord/timeline.jsonl"], check=False).returncode == 0, 10
        ), unit.messages(cur)
        mode = ct.run(["stat", "-c", "%G %a", "/run/memcoord/state.json"]).stdout.split()
        assert mode == ["adm", "640"], mode
        status = ct.run(["memcoord", "status"])
        assert "mcsys-1" in status.stdout and "mcsys-2" in status.stdout, status.stdout
        fetch = (
            f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
        )
        metrics = ct.run(["python3", "-c", fetch]).stdout
        assert re.search(r'^memcoord_domain_current_bytes\{domain="mcsys-1"\} \d', metrics, re.M), metrics[-2000:]
        warnings = [
            e["MESSAGE"]
            for e in unit.journal(cur)
            if e.get("SYSLOG_IDENTIFIER") == "memcoord" and int(e.get("PRIORITY", "6")) <= 4
        ]
        assert warnings == [], warnings
    finally:
        unit.write_config(BASE_CONFIG)
        unit.systemctl("restart", UNIT)


def test_9_metrics_drop_in_loads_and_serves_its_port(unit: Unit) -> None:
    """packaging/memcoord.service.d/metrics.conf, as an admin installs it: systemd takes every setting (a typo
    would be dropped with only a log line), and memcoord serves the metrics port it names.

    What this cannot show here: SocketBindDeny= is enforced by a cgroup BPF program, which systemd inside
    systemd-nspawn cannot attach on these hosts (a bind to another port succeeds in the container), so the
    deny half is checked as a property only."""
    port = 20000 + os.getpid() % 1000  # the container shares the host's loopback
    repo = Path(__file__).resolve().parents[2]
    drop_in = (repo / "packaging/memcoord.service.d/metrics.conf").read_text()
    assert "SocketBindAllow=tcp:9749" in drop_in, "the shipped drop-in changed shape: update this test"
    ct = unit.ct
    ct.sh("mkdir -p /etc/systemd/system/memcoord.service.d")
    ct.write(
        "/etc/systemd/system/memcoord.service.d/metrics.conf",
        drop_in.replace("SocketBindAllow=tcp:9749", f"SocketBindAllow=tcp:{port}"),
    )
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    try:
        unit.systemctl("daemon-reload")
        props = unit.show("SocketBindAllow", "SocketBindDeny", "IPAddressAllow", "IPAddressDeny")
        assert props["SocketBindAllow"].replace(":", "") == f"tcp{port}", props  # 252 prints "tcpPORT"
        assert props["SocketBindDeny"] == "any", props
        assert "192.0.2.10/32" in props["IPAddressAllow"] and "127.0.0.0/8" in props["IPAddressAllow"], props
        assert "0.0.0.0/0" in props["IPAddressDeny"], props
        cur = unit.cursor()
        unit.write_config(BASE_CONFIG + f'\n[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"\n')
        unit.systemctl("restart", UNIT)
        unit.wait_message(cur, f"metrics on http://127.0.0.1:{port}/metrics")
        scraped = ct.run(["python3", "-c", fetch, f"http://127.0.0.1:{port}/metrics"]).stdout
        assert "memcoord_build_info" in scraped, scraped[-1000:]
    finally:
        ct.sh("rm -f /etc/systemd/system/memcoord.service.d/metrics.conf")  # the as-root drop-in stays
        unit.systemctl("daemon-reload")
        unit.write_config(BASE_CONFIG)
        unit.systemctl("restart", UNIT)


def libvirtd_pid() -> int:
    """The PID of the host's libvirtd (from its pidfile)."""
    return int(Path("/run/libvirtd.pid").read_text().strip())


def test_libvirtd_restart(unit: Unit, lab: Lab) -> None:
    """libvirtd killed and started again on the host: memcoord stays up (same PID), logs the loss once and the
    recovery once, and coordinates again afterwards."""
    pid = unit.main_pid()
    cur = unit.cursor()
    daemon = libvirtd_pid()
    os.kill(daemon, signal.SIGTERM)
    if not wait_until(lambda: not Path(f"/proc/{daemon}").exists(), 20):
        os.kill(daemon, signal.SIGKILL)  # stuck on some guest's monitor: a crash is a loss of libvirtd too
        assert wait_until(lambda: not Path(f"/proc/{daemon}").exists(), 10), "libvirtd did not exit"
    try:
        unit.wait_message(cur, "lost the hypervisor", 20)
        time.sleep(4)  # several failed retries: none may be logged again
    finally:
        # Exit 1 only if another user of this shared libvirtd already started it again (pidfile lock).
        subprocess.run(["libvirtd", "-d"], check=False)
        wait_for_libvirtd()
    unit.wait_message(cur, "hypervisor reachable again", 60)
    reconnect(lab)
    msgs = unit.messages(cur)
    assert sum("lost the hypervisor" in m for m in msgs) == 1, msgs
    assert sum("hypervisor reachable again" in m for m in msgs) == 1, msgs
    assert unit.show("ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": str(pid)}
    # Coordinating again: a starving guest is grown.
    cur = unit.cursor()
    starve(lab, "mcsys-1")
    assert wait_until(lambda: actions(unit, cur, "mcsys-1", "grow"), 90), unit.messages(cur)[-30:]
    reset_guests(lab)


def test_uninstall_keeps_config(container: Container) -> None:
    """`make uninstall` stops and removes the unit, the venv and the command, and keeps /etc/memcoord.toml."""
    ct = container
    ct.sh("cd /root/memcoord && make uninstall")
    assert ct.run(["test", "-e", "/opt/memcoord"], check=False).returncode == 1
    assert ct.run(["test", "-e", "/usr/local/bin/memcoord"], check=False).returncode == 1
    assert ct.run(["test", "-e", "/etc/systemd/system/memcoord.service"], check=False).returncode == 1
    assert ct.run(["test", "-e", "/etc/memcoord.toml"], check=False).returncode == 0
    assert ct.show(UNIT, "LoadState")["LoadState"] == "not-found"
