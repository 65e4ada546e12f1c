"""The local host's memory, read from /proc/meminfo by the libvirt adapter for the host guard."""

from __future__ import annotations

from pathlib import Path

import psutil

from memcoord.hypervisor.libvirt import local_host_stats

MEMINFO = """MemTotal:       24599480 kB
MemFree:         1093004 kB
MemAvailable:   20130656 kB
Buffers:          411932 kB
Cached:         17882592 kB
HugePages_Total:       0
"""


def test_available_and_total_are_the_kernels_figures_in_kib():
    host = local_host_stats(MEMINFO)
    assert (host.available_kib, host.total_kib) == (20130656, 24599480)


def test_this_hosts_figures_agree_with_psutil():
    """The figures psutil, the usual library for them, reports for the same host (available moves: within 64 MiB)."""
    host = local_host_stats(Path("/proc/meminfo").read_text())
    vm = psutil.virtual_memory()
    assert host.total_kib == vm.total // 1024
    assert abs(host.available_kib - vm.available // 1024) < 64 * 1024
