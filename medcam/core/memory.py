"""Giving freed memory back to the operating system (glibc), after a large working set is dropped.

glibc keeps freed blocks below its mmap threshold (which grows to 32 MB as blocks are
freed) in its heap for reuse; after a region method drops its window cache (hundreds of
3 MB tensors) and the clean pass's temporaries, the process keeps that memory resident
although nothing uses it. ``malloc_trim`` returns it. Elsewhere (macOS, Windows, musl)
this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _trim_function() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the heap's free memory to the system; whether that was possible here."""
    trim = _trim_function()
    if trim is None:
        return False
    trim(0)
    return True
