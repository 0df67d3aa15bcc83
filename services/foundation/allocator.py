"""glibc's malloc set so that a server's large buffers go back to the system once freed.

glibc serves an allocation above M_MMAP_THRESHOLD (128 KiB at start) with its own mmap and
unmaps it at free, but each such free raises the threshold to the size freed (up to 32 MiB).
After the first reply of a megabyte, megabyte-sized buffers come from the heap instead, where a
freed one is kept for reuse, and the process holds its high-water mark for good. Measured on
an auth replica (tests/system/test_rpc_defence.py): 8 peers asking for 64 blobs of 1 MB each
and reading nothing left it at 253-278 MiB once they were dropped, 77 MiB before; with the
threshold set, at 86-92 MiB. Setting it turns glibc's adjustment off. The HTTP workers set it
too: picture uploads of 5 MiB, 16 at once over 4 rounds, left two workers holding 46-53 MiB
more without it, 20-26 MiB with it (tests/system/test_memory.py).
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE_BUFFER_BYTES = 128 * 1024


def return_large_buffers(threshold: int = LARGE_BUFFER_BYTES) -> bool:
    """Have allocations from `threshold` bytes up mapped on their own, and unmapped at free;
    False where the C library has no mallopt or refuses (not glibc)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None or mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.info("the C library kept its own malloc thresholds (not glibc)")
        return False
    return True
