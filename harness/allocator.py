"""glibc malloc set up for tensor workloads: large buffers reused from the heap, not fresh pages.

glibc serves every allocation above its mmap threshold (32 MB at most, whatever mallopt asks) with
a fresh ``mmap`` and gives it back with ``munmap`` on free. A training step allocates and frees the
same large activation buffers again and again, so each step pays the page faults and the kernel's
zero-filling of every one of them: for an out-of-place ReLU over the every-pixel refiner's
[262144, 64] hidden layer that is most of its time. With mmap off and the heap's top never trimmed,
freed buffers are reused.
The results are unchanged (the same values land in other memory); only speed and the process's
resident size differ, and the run records the setting in its provenance (``packages["malloc"]``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # mallopt takes a C int
OPT_OUT = "HARNESS_DEFAULT_MALLOC"  # set (non-empty) to leave malloc as it is

_state = {"setting": ""}


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def tune_malloc() -> str:
    """Turn glibc's mmap for large blocks and heap trimming off, once per process; returns what is
    in force ("" when not glibc or opted out with $HARNESS_DEFAULT_MALLOC)."""
    if _state["setting"] or os.environ.get(OPT_OUT):
        return _state["setting"]
    libc = _glibc()
    if libc is None:
        return ""
    if libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1:
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
        _state["setting"] = f"glibc {version}: mmap_max=0, trim_threshold={NEVER_TRIM}"
    return _state["setting"]


def malloc_setting() -> str:
    """What :func:`tune_malloc` put in force in this process ("" = the platform's default)."""
    return _state["setting"]
