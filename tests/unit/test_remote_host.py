"""The host guard's figure for a remote libvirt host: libvirt's node stats (free, buffers, cached) read so that no
guest RAM counts as available. The real-libvirtd side (a memfd-backed guest touching memory) is
tests/integration/test_hard_edges.py::test_a_remote_hosts_available_memory_does_not_count_guest_ram_in_its_page_cache.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from memcoord.hypervisor.libvirt import remote_available_kib

KIB = st.integers(min_value=0, max_value=64 * 1024 * 1024)


@st.composite
def guests(draw: st.DrawFn) -> list[tuple[int, int]]:
    """(QEMU's RSS, the part of its guest RAM that sits in the host's page cache as shmem), KiB."""
    out = []
    for _ in range(draw(st.integers(0, 8))):
        rss_kib = draw(KIB)
        out.append((rss_kib, draw(st.integers(0, rss_kib))))
    return out


@given(free_kib=KIB, buffers_kib=KIB, file_cache_kib=KIB, doms=guests())
def test_guest_ram_in_the_page_cache_never_counts_as_available(
    free_kib: int, buffers_kib: int, file_cache_kib: int, doms: list[tuple[int, int]]
) -> None:
    node = {"free": free_kib, "buffers": buffers_kib, "cached": file_cache_kib + sum(shm for _rss, shm in doms)}
    assert remote_available_kib(node, sum(rss for rss, _shm in doms)) <= free_kib + buffers_kib + file_cache_kib


def test_without_guests_the_whole_cache_counts() -> None:
    assert remote_available_kib({"free": 100, "buffers": 20, "cached": 300}, 0) == 420


def test_a_memfd_guests_ram_is_not_counted() -> None:
    """2 GiB of memfd guest RAM (QEMU's RSS a little more) and 500 MiB of file cache: the old figure, free +
    buffers + cached, counted the guest's 2 GiB as available."""
    node = {"free": 1_000_000, "buffers": 10_000, "cached": 2_097_152 + 512_000}
    available_kib = remote_available_kib(node, 2_097_152 + 60_000)
    assert available_kib == 1_000_000 + 10_000 + 512_000 - 60_000
