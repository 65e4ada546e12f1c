"""Cost of one bulk stats call against one call per domain, on a real libvirtd.

    .venv/bin/python bench/stats_rpc.py [--uri qemu:///system] [--guests 1,4,8,16] [--repeat 30]

memcoord samples every guest with one getAllDomainStats-style RPC per tick (here domainListGetStats on our own
domains, which is the same RPC with a domain list); the alternative is virDomainMemoryStats once per domain.
The script starts tiny transient guests named mcbench-NN (<domain type='qemu'>, 64 MiB, no disk, a virtio
balloon; they sit in the BIOS) and destroys them at the end. It never touches a domain without that prefix.
With --uri test:///default it runs against libvirt's in-process test driver instead (no RPC, no guests started:
the test driver's own domains are read, never changed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import libvirt

from memcoord.admin.simulate import format_table

PREFIX = "mcbench-"

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <currentMemory unit='MiB'>64</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <memballoon model='virtio'><stats period='1'/></memballoon>
    <serial type='pty'/>
  </devices>
</domain>"""


def start_guests(conn: libvirt.virConnect, count: int) -> list[libvirt.virDomain]:
    doms = []
    for i in range(count):
        name = f"{PREFIX}{i:02d}"
        try:
            stale = conn.lookupByName(name)
        except libvirt.libvirtError:
            stale = None
        if stale is not None and stale.name().startswith(PREFIX):
            stale.destroy()  # a transient leftover of ours from an interrupted run
        doms.append(conn.createXML(DOMAIN_XML.format(name=name), 0))
    return doms


def stop_guests(doms: list[libvirt.virDomain]) -> None:
    for dom in doms:
        if dom.name().startswith(PREFIX):
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                print(f"could not destroy {dom.name()}: {exc}", file=sys.stderr)


def time_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--guests", default="1,4,8,16", help="guest counts to measure (qemu:// only)")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors still raise; just no stderr noise
    conn = libvirt.open(args.uri)
    rows = []
    started: list[libvirt.virDomain] = []
    try:
        if args.uri.startswith("test:"):
            counts = [len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))]
        else:
            counts = sorted(int(c) for c in args.guests.split(","))
            started = start_guests(conn, counts[-1])
            time.sleep(3)  # let QEMU settle and the balloon come up
        for n in counts:
            doms = started[:n] if started else conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)[:n]

            def bulk(doms: list[libvirt.virDomain] = doms) -> object:
                return conn.domainListGetStats(doms, libvirt.VIR_DOMAIN_STATS_BALLOON)

            def per_domain(doms: list[libvirt.virDomain] = doms) -> object:
                return [d.memoryStats() for d in doms]

            bulk_ms = time_ms(bulk, args.repeat)
            per_ms = time_ms(per_domain, args.repeat)
            rows.append([n, 1, f"{bulk_ms:.2f}", n, f"{per_ms:.2f}", f"{per_ms / bulk_ms:.1f}"])
    finally:
        stop_guests(started)
        conn.close()
    print(f"libvirt {args.uri}, median of {args.repeat} calls")
    headers = ["domains", "bulk RPCs", "bulk ms", "per-domain RPCs", "per-domain ms", "per-domain / bulk"]
    print(format_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
