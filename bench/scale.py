"""Policy cost per tick at 10 .. 10,000 simulated domains: time per decide() and peak memory.

    .venv/bin/python bench/scale.py [--sizes 10,100,1000,10000] [--ticks 20] [--policies memcoord,mom,proxmox]
                                    [--hosts mixed,all-starving]

Two hosts, one table each: `mixed` (every class of guest on every tick, the host roomy) and `all-starving` (every
guest starving on every tick and the host short of memory for them: the scarce split runs over all of them).

Targets: memcoord's policy <= 10 ms per tick at 1,000 domains, <= 100 ms at 10,000. Only the policy's calls
are timed, as the loop makes them (the simulator's own work between ticks is not): `step.decide_paused` (the
decision with the garbage collector paused, and the collection of what it left, which the loop runs right
after), then `applied`. Peak memory is tracemalloc's peak during the decision (Python allocations made by the
policy: the snapshot it reads is built outside); ru_maxrss is the whole process at the end. Times are also given
as ratios against memcoord, since these machines are noisy.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from memcoord.admin.simulate import format_table
from memcoord.core.config import Config
from memcoord.core.model import KIB_PER_MIB, mib_to_kib
from memcoord.core.step import decide_paused
from memcoord.sim.host import SimGuest, SimulatedHypervisor
from memcoord.sim.workloads import Hog, HostPressure, Idle, Sawtooth

if not __package__:  # run as a file (python bench/...py): the repository root makes `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.policies import POLICIES, policy

START_S = 1_000_000.0  # the simulator's clock at the start
RUN_S = 60  # longer than any run of the default ticks (the all-starving host hands memory back for this long)


def mixed_host(n: int) -> SimulatedHypervisor:
    """n guests, a quarter each idle-fat, idle-small, growing, sawtooth: every class shows up every tick."""
    guests = []
    for i in range(n):
        kind = i % 4
        workload: Idle | Hog | Sawtooth
        if kind == 0:
            workload, start_mib = Idle(mib_to_kib(100)), 1024
        elif kind == 1:
            workload, start_mib = Idle(mib_to_kib(200)), 512
        elif kind == 2:
            workload, start_mib = Hog(mib_to_kib(20), start_s=START_S + i % 7, limit_kib=mib_to_kib(1500)), 512
        else:
            workload, start_mib = Sawtooth(mib_to_kib(100), mib_to_kib(800), 30 + i % 11), 512
        guests.append(
            SimGuest(f"vm{i:05d}", max_kib=mib_to_kib(2048), target_kib=mib_to_kib(start_mib), workload=workload)
        )
    return SimulatedHypervisor(guests, host_total_kib=mib_to_kib(2048) * n)


def all_starving_host(n: int) -> SimulatedHypervisor:
    """n 512 MiB guests whose programs already hold 378-390 MiB and grow 2 MiB/s: each is at or below its starving
    line (150 MiB usable) on every tick of the run. The host is at its guard but for what the guests' free memory
    may take, and a host process hands back 1 MiB per guest each second: every tick, every guest wants a grow step,
    together hundreds of times what there is, so the scarce split runs over all of them."""
    guests = [
        SimGuest(
            f"vm{i:05d}",
            max_kib=mib_to_kib(2048),
            target_kib=mib_to_kib(512),
            workload=Hog(mib_to_kib(2), start_s=START_S - 190 - 2 * (i % 7)),
        )
        for i in range(n)
    ]
    guard_kib = mib_to_kib(Config().host.min_available_mib)
    handed_back = [HostPressure(mib_to_kib(1) * n, start_s=0.0, end_s=START_S + s) for s in range(1, RUN_S + 1)]
    return SimulatedHypervisor(
        guests, host_total_kib=mib_to_kib(512 + RUN_S) * n + guard_kib, host_pressure=handed_back
    )


HOSTS: dict[str, Callable[[int], SimulatedHypervisor]] = {"mixed": mixed_host, "all-starving": all_starving_host}


def measure(
    host: Callable[[int], SimulatedHypervisor], policy_name: str, n: int, ticks: int
) -> tuple[float, float, float]:
    """(median ms per tick, max ms per tick, tracemalloc peak MiB) over `ticks` ticks after 2 warm-up ticks."""
    times_ms, peak_b = _ticks(host, policy_name, n, ticks, traced=True)
    return statistics.median(times_ms), max(times_ms), peak_b / 2**20


def untraced_ms(
    host: Callable[[int], SimulatedHypervisor], policy_name: str, n: int, ticks: int
) -> tuple[float, float]:
    """(median, max) ms per tick without tracemalloc (it slows allocation-heavy code a lot).

    MOM and Proxmox decide only every 10 s and return at once in between, so their max is their real cost.
    """
    times_ms, _ = _ticks(host, policy_name, n, ticks, traced=False)
    return statistics.median(times_ms), max(times_ms)


def _ticks(
    host: Callable[[int], SimulatedHypervisor], policy_name: str, n: int, ticks: int, traced: bool
) -> tuple[list[float], int]:
    """ms per tick of the policy's calls as the loop makes them (`decide_paused`, and applied with the changes
    the host took) after 2 warm-up ticks, and with traced the tracemalloc peak (bytes) during the decision. The
    simulator's work is not timed."""
    config = Config()
    hv = host(n)
    hv.ensure_stats_period(list(hv.guests), 1)
    loop_policy = policy(policy_name)
    state = loop_policy.first_state(config)
    times_ms = []
    peak_b = 0
    for tick in range(ticks + 2):
        hv.advance(1.0)
        snapshot = hv.sample()
        if traced:
            gc.collect()
            tracemalloc.start()
        started = time.perf_counter()
        plan, state = decide_paused(loop_policy, snapshot, state, config)
        elapsed_s = time.perf_counter() - started
        if traced:
            peak_b = max(peak_b, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        results = hv.apply(plan.changes)
        started = time.perf_counter()
        state = loop_policy.applied(state, results, snapshot.taken_at_s)
        elapsed_s += time.perf_counter() - started
        if tick >= 2:
            times_ms.append(elapsed_s * 1000)
    return times_ms, peak_b


def table(host_name: str, sizes: list[int], policies: list[str], ticks: int) -> str:
    """One host's table: every size x policy."""
    host = HOSTS[host_name]
    rows = []
    own_ms: dict[int, float] = {}
    for n in sizes:
        for name in policies:
            median_ms, max_ms = untraced_ms(host, name, n, ticks)
            _, _, peak_mib = measure(host, name, n, max(3, ticks // 4))
            if name == "memcoord":
                own_ms[n] = max_ms
            ratio = f"{max_ms / own_ms[n]:.2f}" if own_ms.get(n) else "-"
            target = {1000: 10.0, 10000: 100.0}.get(n)
            verdict = "-" if target is None or name != "memcoord" else ("ok" if max_ms <= target else "MISSED")
            rows.append([n, name, f"{median_ms:.2f}", f"{max_ms:.2f}", ratio, f"{peak_mib:.1f}", verdict])
            print(f"  {host_name} {n} {name} done", file=sys.stderr)
    headers = ["domains", "policy", "ms/tick median", "ms/tick max", "max x memcoord", "policy peak MiB", "target"]
    return format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--ticks", type=int, default=20)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--hosts", default=",".join(HOSTS), help="comma-separated, of: %(default)s")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    policies = args.policies.split(",")
    hosts = args.hosts.split(",")
    unknown = [h for h in hosts if h not in HOSTS]
    if unknown:
        parser.error(f"--hosts: unknown {', '.join(unknown)}; known: {', '.join(HOSTS)}")
    for i, host_name in enumerate(hosts):
        if host_name != "mixed" or i:
            print(f"\n{host_name} host:")
        print(table(host_name, sizes, policies, args.ticks))
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB
    print(f"process peak RSS (ru_maxrss, whole run incl. simulator): {maxrss_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
