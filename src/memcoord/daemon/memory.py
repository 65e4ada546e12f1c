"""Giving memory back after the daemon's start and after each reload.

Loading the config, connecting to libvirt and the first tick leave garbage:
cycles the collector has not reached yet, and blocks freed to glibc's malloc, which keeps them in its heaps (the
main one and those of the threads that called libvirt) rather than returning them to the kernel. `release()`
collects the cycles and asks glibc to return the whole free pages of its heaps (malloc_trim), so that the RSS the
admin sees is what the daemon uses rather than what its start once needed.

Not gc.freeze(): it gives no memory back (measured with bench/daemon_rss.py), and an object frozen after a
reload that later becomes cyclic garbage (a replaced config) would never be collected.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl) or ctypes cannot load it."""
    try:
        import ctypes  # only here: a C library without malloc_trim never needs it

        return ctypes.CDLL(None).malloc_trim  # the process's own symbols: those of the C library it runs on
    except (ImportError, OSError, AttributeError):
        return None


def release() -> None:
    """Collect garbage cycles, then return the C heaps' free pages to the kernel where glibc can."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
