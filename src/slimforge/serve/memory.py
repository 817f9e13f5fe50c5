"""Giving freed heap memory back to the operating system.

Owns: `release_free_memory`. glibc's allocator keeps memory freed by large, short-lived
tensors in its arenas; a server that sees many batch shapes then grows without bound although
it holds no more live data (all-MiniLM-L6-v2, 600 random batches: 1.57 GB RSS without
trimming, 0.89 GB with `malloc_trim` every 10 batches). On other C libraries this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS (glibc `malloc_trim(0)`); True if it could."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
