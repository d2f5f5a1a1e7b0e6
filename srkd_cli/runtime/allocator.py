"""glibc told to keep freed memory for reuse, for CPU runs of large images."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the C heap for reuse (glibc only); True if it took effect.

    glibc serves every allocation over 32 MB (one 64-channel activation of a 512x512 image
    is 64 MB) with a fresh mmap and unmaps it on free, so each such tensor is page-faulted in
    anew on every forward: measured at up to half of SqueezeSR's CPU time (docs/performance.md).
    With mmap off and trimming out of reach, freed blocks are reused instead. The cost: the
    process keeps its peak memory until it exits, which suits a command-line run.
    """
    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(name)
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False  # not glibc (musl has no mallopt)
        m_trim_threshold, m_mmap_max = -1, -4
        ok = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except OSError:
        return False
    global _TUNED
    _TUNED = _TUNED or ok
    return ok


def allocator_tuned() -> bool:
    """Whether `tune_cpu_allocator` has taken effect in this process (whole images then run faster than tiles)."""
    return _TUNED


__all__ = ["allocator_tuned", "tune_cpu_allocator"]
