"""Handing freed heap back to the operating system (shell only, never the core).

CPython gives the memory of freed objects back to its allocators, not
always to the system: small objects live in 256 KiB arenas (pymalloc) that
are released only when wholly empty, and larger blocks (dict tables, the
journal's payloads) come from glibc's malloc, whose heaps shrink only from
the top. After a mass eviction (a million remote users timing out to
offline) much of that memory is free but still counted in the process's RSS.
glibc's ``malloc_trim(0)`` returns every free page it can (``madvise`` on
whole free pages inside the heaps too, since glibc 2.8), so RSS follows what
is live again; ``bench/bench_memory.py`` measures the difference.

``release_free_memory`` is a no-op where there is no glibc (musl, macOS).
It walks the heap (a few ms for hundreds of MB), so callers run it after a
mass eviction, not per request.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> bool:
    """Give free heap pages back to the system; False if this libc cannot."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
