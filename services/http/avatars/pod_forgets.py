"""Pictures deleted lately, told to every worker of the pod: a ring of keys in a shared file.

Each worker keeps the pictures it served in memory (picture_cache.py). A worker that deletes a
picture (a replacement, an account deletion) forgets it at once; the other workers of its pod
learn of it here, on their next picture request, so the whole pod answers 404 from then on.
Other pods only learn through the cache entries' lifetime (GATEHOUSE_PICTURE_CACHE_SECONDS).

The file, in the pod's metrics folder, holds a count of keys recorded so far and the last
SLOTS keys, key n in slot n % SLOTS. A writer records under an exclusive `flock`; a reader
compares the count with the one it saw last (one read of the mapped memory, no system call)
and only when it moved reads the new keys under a shared `flock`. A reader more than SLOTS keys
behind, or handed a key too long for a slot, forgets everything (`news` answers None).

    forgets = PodForgets(path)    # path None: a pod of one worker, nothing to share
    forgets.open(); ...; forgets.close()   # in each worker, after the fork
    forgets.record(key)
    forgets.news() -> list[str] | None     # keys recorded by anyone since the last call
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.foundation.metrics import MULTIPROC_ENV

SLOTS = 1024
SLOT_BYTES = 128
_COUNT = struct.Struct("<Q")
_HEADER_BYTES = 64
FILE_BYTES = _HEADER_BYTES + SLOTS * SLOT_BYTES


def pod_forgets_path() -> Path | None:
    """The pod's file, in the metrics folder the pod's workers share; None outside a pod."""
    metrics_dir = os.environ.get(MULTIPROC_ENV)
    return Path(metrics_dir) / "forgotten-pictures" if metrics_dir else None


class PodForgets:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._seen = 0

    def open(self) -> None:
        """Map the file, creating it if this is the pod's first worker. A file descriptor of its
        own per worker: `flock` locks belong to it, so one shared through a fork would not
        exclude the other worker."""
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            with _locked(fd, fcntl.LOCK_EX):
                if os.fstat(fd).st_size < FILE_BYTES:
                    os.ftruncate(fd, FILE_BYTES)
            self._map = mmap.mmap(fd, FILE_BYTES)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._seen = self._count()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def record(self, key: str) -> None:
        if self._map is None or self._fd is None:
            return
        encoded = key.encode("ascii", "replace")
        # An empty slot stands for a key that does not fit: its readers forget everything.
        slot = encoded if len(encoded) <= SLOT_BYTES else b""
        with _locked(self._fd, fcntl.LOCK_EX):
            count = self._count()
            start = _HEADER_BYTES + (count % SLOTS) * SLOT_BYTES
            self._map[start : start + SLOT_BYTES] = slot.ljust(SLOT_BYTES, b"\0")
            _COUNT.pack_into(self._map, 0, count + 1)

    def news(self) -> list[str] | None:
        """The keys recorded since the last call (this worker's own included); None when some
        were missed, so that the caller forgets everything."""
        if self._map is None or self._fd is None or self._count() == self._seen:
            return []
        with _locked(self._fd, fcntl.LOCK_SH):
            count = self._count()
            missed = count < self._seen or count - self._seen > SLOTS
            keys = [] if missed else [self._slot(n) for n in range(self._seen, count)]
        self._seen = count
        if missed or "" in keys:
            return None
        return keys

    def _count(self) -> int:
        assert self._map is not None
        count: int = _COUNT.unpack_from(self._map, 0)[0]
        return count

    def _slot(self, number: int) -> str:
        assert self._map is not None
        start = _HEADER_BYTES + (number % SLOTS) * SLOT_BYTES
        return self._map[start : start + SLOT_BYTES].rstrip(b"\0").decode("ascii", "replace")


@contextmanager
def _locked(fd: int, operation: int) -> Iterator[None]:
    fcntl.flock(fd, operation)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
