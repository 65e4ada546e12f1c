"""memory.release(): what the daemon calls after its start and each reload gives freed C-heap memory back."""

from __future__ import annotations

import subprocess
import sys

from memcoord.daemon import memory

# In a child process, so that what this test frees and trims is its own: 64 MiB of 4 KiB blocks from malloc (bytes
# objects that size are not Python's small-object allocator's), every 16th kept so that glibc cannot give the freed
# ones back by lowering the top of its heap, then the rest freed.
CHILD = """
import sys
from memcoord.daemon import memory

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

blocks = [bytes(4096) for _ in range(16384)]
kept = blocks[::16]
del blocks
freed_kib = rss_kib()
memory.release()
print(freed_kib, rss_kib(), len(kept))
"""


def test_glibc_trim_is_found():
    assert memory._malloc_trim() is not None


def test_release_gives_freed_heap_memory_back():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    before_kib, after_kib, _kept = map(int, done.stdout.split())
    assert before_kib - after_kib > 32 * 1024, (before_kib, after_kib)
