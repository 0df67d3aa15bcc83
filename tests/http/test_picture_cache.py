"""The per-worker picture cache: entry lifetime, forgetting (in one worker and across the workers
of a pod), reads that race a deletion, and the bound on its bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.http.avatars.blobstore import Blob
from services.http.avatars.picture_cache import PictureCache
from services.http.avatars.pod_forgets import SLOTS, PodForgets
from services.http.avatars.replace import Avatars

KEY = f"9/{'a' * 64}.webp"
LIFETIME = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """A blob store's `get`, counting its reads; `blobs` is what it holds."""

    def __init__(self) -> None:
        self.blobs: dict[str, Blob] = {KEY: Blob("image/webp", b"picture")}
        self.reads = 0

    async def get(self, key: str) -> Blob | None:
        self.reads += 1
        return self.blobs.get(key)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def pod_file(tmp_path: Path) -> Path:
    return tmp_path / "forgotten-pictures"


@pytest.fixture
def pod_workers(pod_file: Path) -> Iterator[tuple[PodForgets, PodForgets]]:
    """The shared file as two workers of one pod open it."""
    first, second = PodForgets(pod_file), PodForgets(pod_file)
    first.open()
    second.open()
    yield first, second
    first.close()
    second.close()


async def test_a_picture_is_served_from_memory_until_its_lifetime_ends(
    clock: Clock, store: Store
) -> None:
    cache = PictureCache(1024, LIFETIME, clock=clock)
    assert await cache.fetch(KEY, store.get) == Blob("image/webp", b"picture")
    clock.now += LIFETIME - 0.01
    assert await cache.fetch(KEY, store.get) == Blob("image/webp", b"picture")
    assert store.reads == 1

    del store.blobs[KEY]  # deleted by another pod
    clock.now += 0.01
    assert await cache.fetch(KEY, store.get) is None
    assert store.reads == 2
    assert cache.size_bytes == 0


async def test_a_forgotten_picture_is_read_again_at_once(clock: Clock, store: Store) -> None:
    cache = PictureCache(1024, LIFETIME, clock=clock)
    assert await cache.fetch(KEY, store.get) is not None
    del store.blobs[KEY]
    cache.forget(KEY)
    assert await cache.fetch(KEY, store.get) is None
    assert store.reads == 2


async def test_a_read_under_way_when_a_picture_is_forgotten_is_not_kept(
    clock: Clock, store: Store
) -> None:
    cache = PictureCache(1024, LIFETIME, clock=clock)
    reading, deleted = asyncio.Event(), asyncio.Event()

    async def slow_get(key: str) -> Blob | None:
        blob = await store.get(key)  # the bytes, read just before the deletion
        reading.set()
        await deleted.wait()
        return blob

    late_read = asyncio.create_task(cache.fetch(KEY, slow_get))
    await reading.wait()
    del store.blobs[KEY]
    cache.forget(KEY)
    deleted.set()
    assert await late_read is not None  # began before the deletion
    assert await cache.fetch(KEY, store.get) is None


class HeldStore(Store):
    """A store whose reads wait until `answer` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.answer = asyncio.Event()

    async def get(self, key: str) -> Blob | None:
        blob = await super().get(key)
        self.reading.set()
        await self.answer.wait()
        return blob


async def test_requests_for_a_picture_being_read_wait_for_that_read(clock: Clock) -> None:
    store = HeldStore()
    cache = PictureCache(1024, LIFETIME, clock=clock)
    first = asyncio.create_task(cache.fetch(KEY, store.get))
    await store.reading.wait()
    others = [asyncio.create_task(cache.fetch(KEY, store.get)) for _ in range(5)]
    first.cancel()  # the request that began the read left: the others still get it
    store.answer.set()
    assert await asyncio.gather(*others) == [Blob("image/webp", b"picture")] * 5
    assert store.reads == 1
    assert await cache.fetch(KEY, store.get) == Blob("image/webp", b"picture")
    assert store.reads == 1  # kept


async def test_a_request_after_a_forget_does_not_wait_for_a_read_begun_before_it(
    clock: Clock,
) -> None:
    store = HeldStore()
    cache = PictureCache(1024, LIFETIME, clock=clock)
    stale = asyncio.create_task(cache.fetch(KEY, store.get))
    await store.reading.wait()
    del store.blobs[KEY]
    cache.forget(KEY)
    fresh = asyncio.create_task(cache.fetch(KEY, store.get))
    store.answer.set()
    assert await stale == Blob("image/webp", b"picture")  # began before the deletion
    assert await fresh is None
    assert store.reads == 2


async def test_a_failed_read_fails_every_request_waiting_for_it_and_is_not_kept(
    clock: Clock,
) -> None:
    cache = PictureCache(1024, LIFETIME, clock=clock)
    failing = asyncio.Event()

    async def broken_get(key: str) -> Blob | None:
        await failing.wait()
        raise OSError("the store is down")

    waiting = [asyncio.create_task(cache.fetch(KEY, broken_get)) for _ in range(3)]
    failing.set()
    for request in waiting:
        with pytest.raises(OSError, match="the store is down"):
            await request
    store = Store()
    assert await cache.fetch(KEY, store.get) == Blob("image/webp", b"picture")
    assert store.reads == 1


async def test_a_picture_forgotten_by_one_worker_is_dropped_by_the_others_of_its_pod(
    clock: Clock, store: Store, pod_workers: tuple[PodForgets, PodForgets]
) -> None:
    deleting = PictureCache(1024, LIFETIME, pod_workers[0], clock=clock)
    sibling = PictureCache(1024, LIFETIME, pod_workers[1], clock=clock)
    other_key = f"9/{'b' * 64}.webp"
    store.blobs[other_key] = Blob("image/webp", b"another")
    for cache in (deleting, sibling):
        assert await cache.fetch(KEY, store.get) is not None
        assert await cache.fetch(other_key, store.get) is not None

    del store.blobs[KEY]
    deleting.forget(KEY)
    assert sibling.get(KEY) is None
    assert sibling.get(other_key) == Blob("image/webp", b"another")  # only what was forgotten
    assert await sibling.fetch(KEY, store.get) is None


async def test_forgetting_the_key_of_no_uploaded_picture_costs_the_pod_nothing(
    store: Store, pod_workers: tuple[PodForgets, PodForgets]
) -> None:
    sibling = PictureCache(1024, LIFETIME, pod_workers[1])
    assert await sibling.fetch(KEY, store.get) is not None
    # An account without a picture has the empty key; the cache and store are all it uses here.
    cache = PictureCache(1024, LIFETIME, pod_workers[0])
    avatars = Avatars(None, store, None, cache, 2)  # type: ignore[arg-type]
    for key in ("", "default/9.svg"):
        avatars.forget_picture(key)
    assert sibling.get(KEY) is not None
    assert store.reads == 1


async def test_a_worker_that_missed_forgets_drops_everything(
    store: Store, pod_workers: tuple[PodForgets, PodForgets]
) -> None:
    deleting, sibling = pod_workers
    cache = PictureCache(1024, LIFETIME, sibling)
    assert await cache.fetch(KEY, store.get) is not None
    for number in range(SLOTS + 1):  # more than the ring holds since the sibling last looked
        deleting.record(f"1/{number:064x}.webp")
    assert cache.get(KEY) is None
    assert cache.size_bytes == 0


async def test_a_new_worker_starts_after_the_forgets_recorded_before_it(
    pod_file: Path, pod_workers: tuple[PodForgets, PodForgets]
) -> None:
    pod_workers[0].record(KEY)
    late = PodForgets(pod_file)
    late.open()
    try:
        assert late.news() == []
        pod_workers[0].record(KEY)
        assert late.news() == [KEY]
        assert late.news() == []
    finally:
        late.close()


async def test_its_bytes_stay_within_the_bound(clock: Clock, store: Store) -> None:
    cache = PictureCache(250, LIFETIME, clock=clock)
    keys = [f"9/{str(n) * 64}.webp" for n in range(4)]
    for key in keys:
        store.blobs[key] = Blob("image/webp", bytes(100))
        assert await cache.fetch(key, store.get) is not None
        assert cache.size_bytes <= 250
    assert [cache.get(key) is not None for key in keys] == [False, False, True, True]
    store.blobs["9/big.webp"] = Blob("image/webp", bytes(251))
    assert await cache.fetch("9/big.webp", store.get) is not None
    assert cache.get("9/big.webp") is None
    assert cache.size_bytes == 200


async def test_a_lifetime_of_zero_keeps_nothing(store: Store) -> None:
    cache = PictureCache(1024, 0.0)
    for _ in range(2):
        assert await cache.fetch(KEY, store.get) is not None
    assert (store.reads, cache.size_bytes) == (2, 0)
