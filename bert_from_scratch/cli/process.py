"""Process-level performance settings for this project's commands.

On the VMs this project is developed on, page faults are expensive: glibc hands large freed
buffers back to the OS and the next allocation faults them in again (``shared/PERF.md``
measured ~40% of a torch training step). ``keep_freed_memory()`` tells glibc (through
``mallopt``) to serve large allocations from the heap and not to trim it, which is what
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`` in the environment would do. The CLI and
the benchmarks call it; library code never does. Peak RSS may grow by the size of a step's
temporaries, which are then reused instead of faulted in again.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied = None


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse. Returns True when it took effect (glibc only)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok1 = libc.mallopt(M_MMAP_MAX, 0)
        ok2 = libc.mallopt(M_TRIM_THRESHOLD, 2**30)
        _applied = bool(ok1 and ok2)
    except (OSError, AttributeError):
        _applied = False
    return _applied
