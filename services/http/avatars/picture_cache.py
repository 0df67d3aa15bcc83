"""The pictures a worker served lately, kept in memory for a while so that a picture viewed again
costs no call to the blob store.

Keys name fixed bytes, so a kept picture is never wrong, but it may be deleted (a replacement, an
account deletion). So each entry lives at most `lifetime` seconds
(GATEHOUSE_PICTURE_CACHE_SECONDS): after it, every worker of every pod asks the blob store
again and answers 404 for a deleted picture. The worker that deletes a picture calls `forget`,
which the other workers of its pod apply on their next request (pod_forgets.py), so the pod
that answered the deletion answers 404 at once. A read from the blob store that was under way
when some key was forgotten is not kept: it may hold the bytes that were just deleted.

Entries are kept in the order they were added, which is the order they expire in; the oldest go
first when the total would pass `max_bytes`. Requests for a key that is being read wait for
that read instead of starting their own, unless some key was forgotten since it began (it may
hold deleted bytes): a popular picture leaving the memory of a worker costs one call to the
blob store, not one per request meanwhile. The read is not cancelled when a request that waits
for it goes away.

    cache = PictureCache(max_bytes, lifetime, forgets)
    blob = await cache.fetch(key, store.get)   # from memory, else read and kept
    cache.forget(key)                          # after the blob store deleted it
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.http import metrics
from services.http.avatars.blobstore import Blob
from services.http.avatars.pod_forgets import PodForgets

# Pictures are 256x256 WebPs of tens of KiB: some hundreds of them per worker.
MEMORY_CACHE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class _Entry:
    blob: Blob
    expires_at: float


class PictureCache:
    def __init__(
        self,
        max_bytes: int,
        lifetime: float,
        forgets: PodForgets | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_bytes = max_bytes
        self._lifetime = lifetime
        self._forgets = forgets or PodForgets(None)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        # Moves whenever a key is forgotten: a read that began before it is not kept.
        self._forgotten_count = 0
        # Reads under way, by key, each with the _forgotten_count it began at.
        self._reading: dict[str, tuple[int, asyncio.Future[Blob | None]]] = {}

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> Blob | None:
        self._catch_up()
        entry = self._entries.get(key)
        return entry.blob if entry is not None else None

    async def fetch(self, key: str, read: Callable[[str], Awaitable[Blob | None]]) -> Blob | None:
        """The blob from memory, else from `read(key)`, then kept for the lifetime."""
        blob = self.get(key)
        if blob is not None:
            return blob
        began_at, reading = self._reading.get(key, (None, None))
        if reading is None or began_at != self._forgotten_count:
            reading = asyncio.ensure_future(self._read_and_keep(key, read))
            self._reading[key] = (self._forgotten_count, reading)
            reading.add_done_callback(lambda done: self._read_done(key, done))
        return await asyncio.shield(reading)

    async def _read_and_keep(
        self, key: str, read: Callable[[str], Awaitable[Blob | None]]
    ) -> Blob | None:
        forgotten_before = self._forgotten_count
        blob = await read(key)
        self._catch_up()
        if blob is not None and self._forgotten_count == forgotten_before:
            self._add(key, blob)
        return blob

    def _read_done(self, key: str, reading: asyncio.Future[Blob | None]) -> None:
        if self._reading.get(key, (None, None))[1] is reading:
            del self._reading[key]
        if not reading.cancelled():
            reading.exception()  # retrieved: every request that waited for it may have left

    def forget(self, key: str) -> None:
        """Stop serving `key` from memory in every worker of this pod (call it once the blob
        store has deleted it)."""
        self._drop(key)
        self._forgotten_count += 1
        self._forgets.record(key)

    def _add(self, key: str, blob: Blob) -> None:
        size = len(blob.data)
        if self._lifetime <= 0 or size > self._max_bytes:
            return
        self._drop(key)
        self._entries[key] = _Entry(blob, self._clock() + self._lifetime)
        total = self._bytes + size
        while total > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            total -= len(evicted.blob.data)
        self._set_size(total)

    def _catch_up(self) -> None:
        """Drop the entries past their lifetime and those another worker of the pod forgot."""
        now = self._clock()
        while self._entries:
            oldest_key, oldest = next(iter(self._entries.items()))
            if oldest.expires_at > now:
                break
            self._drop(oldest_key)
        news = self._forgets.news()
        if news is None:
            self._entries.clear()
            self._set_size(0)
            self._forgotten_count += 1
        elif news:
            for key in news:
                self._drop(key)
            self._forgotten_count += 1

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._set_size(self._bytes - len(entry.blob.data))

    def _set_size(self, size: int) -> None:
        self._bytes = size
        metrics.PICTURE_CACHE_BYTES.set(size)
