"""The in-process copies of Redis values (local_cache.py) against the real Redis: they answer
only what Redis holds at least as of the read's start, and stop answering, rather than answer
stale, when the invalidation stream is lost or Redis freezes."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import tempfile
import time
import types
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from devstack import DataStores
from devstack.ports import wait_until_async
from services.auth.accounts import AccountStore
from services.auth.store import cache as cache_module
from services.auth.store import local_cache
from services.auth.store.cache import (
    ActiveSession,
    CachedProfile,
    LastWrite,
    RedisCache,
    profile_key,
)
from services.auth.store.database import Database
from services.auth.store.local_cache import TrackedCopies

from .conftest import LOCAL_CACHE_INTERVAL, REDIS_TIMEOUT, Eventually, new_cache, redis_errors
from .test_accounts import log_in, register

ROUNDS = 200


def local_hits() -> float:
    return (
        REGISTRY.get_sample_value("gatehouse_auth_local_cache_lookups_total", {"result": "hit"})
        or 0.0
    )


def answering_gauge() -> float:
    return REGISTRY.get_sample_value("gatehouse_auth_local_cache_answering") or 0.0


class RelianceOnCopies:
    """Whether the writes and reads made since `begin` could rely on Redis and the copies: the
    copies answered every time they were asked (a heartbeat proven within the interval, 0.5 s),
    the cache's breaker stayed closed with no Redis error counted, and the cache had missed no
    write (a missed one raises gh:since past every entry written before). A loaded machine can
    break each (a late heartbeat; a Redis command past its 0.2 s timeout, which opens the
    breaker for a second): the reads then go to Redis or MySQL, as they must, so a test about
    reads the copies answer tries again. It checks the first attempt that could, outside the
    wait."""

    def __init__(self, cache: RedisCache, monkeypatch: pytest.MonkeyPatch) -> None:
        self._cache = cache
        self._answers: list[bool] = []
        self._errors = 0.0
        self._usable_before = False
        copies = copies_of(cache)
        answering = copies.answering

        def recorded() -> bool:
            answer = answering()
            self._answers.append(answer)
            return answer

        monkeypatch.setattr(copies, "answering", recorded)

    def begin(self) -> None:
        self._answers.clear()
        self._errors = redis_errors()
        self._usable_before = self._usable()

    def held(self) -> bool:
        return (
            all(self._answers)
            and self._usable_before
            and self._usable()
            and redis_errors() == self._errors
        )

    def _usable(self) -> bool:
        return not self._cache.breaker_open and self._cache._covered == self._cache._missed


def copies_of(cache: RedisCache) -> TrackedCopies:
    copies = cache._copies
    assert copies is not None, "the test cache keeps no copies"
    return copies


async def until_answering(cache: RedisCache) -> None:
    copies = copies_of(cache)
    await wait_until_async(copies.answering, 10.0, "the copies answer")


async def kill_invalidation_connection(redis: Redis, cache: RedisCache) -> None:
    name = copies_of(cache).client_name
    clients = [c for c in await redis.client_list() if c.get("name") == name]
    assert len(clients) == 1, f"one connection named {name}: {clients}"
    await redis.execute_command("CLIENT", "KILL", "ID", clients[0]["id"])


async def connection_id(redis: Redis, copies: TrackedCopies) -> int | None:
    """The id of the copies' invalidation connection in CLIENT LIST; None: there is none."""
    ids = [c["id"] for c in await redis.client_list() if c.get("name") == copies.client_name]
    return int(ids[0]) if ids else None


def started_copies(
    url: str, run_id: Callable[[], str | None], *, timeout: float = REDIS_TIMEOUT
) -> TrackedCopies:
    """Copies on their own (no RedisCache), with the replicas' default timeout and interval
    (a test that counts connections may allow a longer timeout: a loaded machine's stall
    past 0.2 s drops the connection)."""
    copies = TrackedCopies(
        url,
        timeout=timeout,
        interval=LOCAL_CACHE_INTERVAL,
        max_entries=100,
        max_age=3600.0,
        server_run_id=run_id,
    )
    copies.start()
    return copies


def steady_copies(url: str, run_id: str, *, max_age: float = 3600.0) -> TrackedCopies:
    """Copies that answer throughout, however loaded the machine (a 4 s heartbeat interval)
    and keep their connection through its stalls (a 5 s timeout): for tests of what a fill
    keeps."""
    copies = TrackedCopies(
        url,
        timeout=5.0,
        interval=4.0,
        max_entries=100,
        max_age=max_age,
        server_run_id=lambda: run_id,
    )
    copies.start()
    return copies


def reader_of(data: bytes) -> local_cache._Reader:
    """What Redis sent, to parse."""
    stream = asyncio.StreamReader(limit=local_cache._MAX_LINE)
    stream.feed_data(data)
    stream.feed_eof()
    return local_cache._Reader(stream)


async def written_profile(cache: RedisCache, primary: Database) -> tuple[int, datetime]:
    """A new user's profile (version 1) and last write, recorded in Redis. The write's time."""
    user_id = secrets.randbits(62)
    written = await primary.server_time()
    await cache.record_write([LastWrite(user_id, written), CachedProfile(user_id, 1, written, {})])
    return user_id, written


async def copied_profile(cache: RedisCache, primary: Database) -> tuple[int, datetime]:
    """A new user's profile (version 1) and last write, read once: copied. The write's time."""
    user_id, written = await written_profile(cache, primary)
    await until_answering(cache)
    await cache.session_view(user_id, "s")
    return user_id, written


async def test_a_warm_read_is_answered_in_process(
    cache: RedisCache, primary: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ten_reads_answered_in_process(cache, primary, monkeypatch)


async def ten_reads_answered_in_process(
    cache: RedisCache, primary: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new profile (version 1), copied by a first read, then read ten times: each read is
    answered in process."""
    reliance = RelianceOnCopies(cache, monkeypatch)
    rounds: list[tuple[list[int | None], float]] = []

    async def ten_reads_relying_on_the_copies() -> bool:
        reliance.begin()
        user_id, _ = await written_profile(cache, primary)
        await cache.session_view(user_id, "s")  # copies it
        hits = local_hits()
        views = [await cache.session_view(user_id, "s") for _ in range(10)]
        if not reliance.held():
            return False  # the write or the reads could not rely on Redis and the copies
        versions = [None if v is None or v.profile is None else v.profile.version for v in views]
        rounds.append((versions, local_hits() - hits))
        return True

    await wait_until_async(ten_reads_relying_on_the_copies, 10.0, "ten reads rely on the copies")
    assert rounds == [([1] * 10, 10)]


@pytest.fixture
async def redis_on_a_unix_socket() -> AsyncIterator[str]:
    """A Redis of its own that listens on a unix socket only: its unix:// URL."""
    folder = Path(tempfile.mkdtemp(prefix="gh-redis-", dir="/tmp"))  # socket paths are short
    socket_path = folder / "redis.sock"
    argv = ["redis-server", "--port", "0", "--unixsocket", str(socket_path), "--save", ""]
    server = await asyncio.create_subprocess_exec(
        *argv, "--appendonly", "no", "--dir", str(folder), stdout=asyncio.subprocess.DEVNULL
    )
    client = Redis(unix_socket_path=str(socket_path))
    try:

        async def answers() -> bool:
            try:
                return bool(await client.ping())
            except (ConnectionError, OSError):
                return False

        await wait_until_async(answers, 10.0, "redis-server answers on its unix socket")
        yield f"unix://{socket_path}?db=0"
    finally:
        await client.aclose()
        server.terminate()
        async with asyncio.timeout(10):
            await server.wait()
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_warm_read_is_answered_in_process_with_redis_on_a_unix_socket(
    data_stores: DataStores,
    primary: Database,
    redis_on_a_unix_socket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The invalidation connection goes where the pool goes: the unix socket, not a TCP port."""
    cache = new_cache(data_stores, primary, url=redis_on_a_unix_socket)
    await cache.start()
    try:
        await ten_reads_answered_in_process(cache, primary, monkeypatch)
    finally:
        await cache.close()


async def test_a_warm_read_parses_no_value_again(
    cache: RedisCache, primary: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copies hand every read of a key the same bytes: their parse is kept, not redone."""
    parsed: list[object] = []
    counting = types.SimpleNamespace(
        loads=lambda raw: parsed.append(raw) or json.loads(raw), dumps=json.dumps
    )
    monkeypatch.setattr(cache_module, "json", counting)
    reliance = RelianceOnCopies(cache, monkeypatch)
    rounds: list[tuple[float, bool, list[object]]] = []

    async def a_read_relying_on_the_copies() -> bool:
        reliance.begin()
        user_id, _ = await written_profile(cache, primary)
        now = await primary.server_time()
        await cache.record_write([ActiveSession("s2", user_id, now + timedelta(hours=1), now)])
        await cache.session_view(user_id, "s2")  # its first read copies and parses
        parsed.clear()
        hits = local_hits()
        view = await cache.session_view(user_id, "s2")
        if not reliance.held():
            return False  # the writes or the reads could not rely on Redis and the copies
        whole = view is not None and view.session is not None and view.profile is not None
        rounds.append((local_hits() - hits, whole, list(parsed)))
        return True

    await wait_until_async(a_read_relying_on_the_copies, 10.0, "a read relies on the copies")
    assert rounds == [(1, True, [])]


async def test_a_change_by_another_client_is_read_at_once(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    """Read-your-writes across replicas: the next read after another client's change, with no
    pause between them, sees it (the barrier); and reads between changes are answered in
    process."""
    user_id = secrets.randbits(62)
    written = await primary.server_time()
    await cache.record_write([LastWrite(user_id, written)])
    await until_answering(cache)
    hits = local_hits()
    for version in range(1, ROUNDS + 1):
        entry = CachedProfile(user_id, version, written, {"nickname": str(version)})
        # Another replica's write: a plain client, not this cache.
        await redis.set(
            profile_key(user_id),
            f'{{"v": {version}, "at": {micros(written)}, "data": {{"nickname": "{version}"}}}}',
        )
        for _ in range(2):
            view = await cache.session_view(user_id, "s")
            assert view is not None and view.profile == entry, f"round {version}"
    assert local_hits() - hits >= ROUNDS / 2, "the copies hardly ever answered"


async def test_a_fill_racing_a_change_copies_nothing(
    cache: RedisCache, redis: Redis, eventually: Eventually
) -> None:
    copies = copies_of(cache)
    await until_answering(cache)
    key = profile_key(secrets.randbits(62))
    fill = copies.begin_fill([key])
    assert fill is not None
    old = await redis.mget([key])
    await redis.set(key, b"new")  # changed after the read, before its copy is stored

    async def invalidated() -> bool:
        return key not in copies._placeholders

    await eventually(invalidated, "the change's invalidation arrives")
    copies.end_fill(fill, old)
    assert await copies.read([key]) is None  # not copied: read Redis


async def test_a_lost_invalidation_connection_stops_the_copies(
    cache: RedisCache, primary: Database, redis: Redis, eventually: Eventually
) -> None:
    user_id, written = await copied_profile(cache, primary)
    copies = copies_of(cache)
    await kill_invalidation_connection(redis, cache)
    # A change nobody's invalidation carries to this replica any more.
    await redis.set(profile_key(user_id), f'{{"v": 2, "at": {micros(written)}, "data": {{}}}}')

    async def stopped() -> bool:
        return not copies.answering()

    await eventually(stopped, "the copies stop answering")
    assert answering_gauge() == 0
    hits = local_hits()
    view = await cache.session_view(user_id, "s")
    assert view is not None and view.profile is not None and view.profile.version == 2
    assert local_hits() == hits
    await until_answering(cache)  # reconnected
    view = await cache.session_view(user_id, "s")
    assert view is not None and view.profile is not None and view.profile.version == 2


async def test_a_frozen_redis_stops_the_copies_within_the_interval(
    cache: RedisCache, primary: Database, pause_redis: Callable[[], None]
) -> None:
    user_id, _ = await copied_profile(cache, primary)
    copies = copies_of(cache)
    pause_redis()
    await wait_until_async(
        lambda: not copies.answering(),
        LOCAL_CACHE_INTERVAL + 0.5,
        "the copies to stop answering",
        interval=0.01,
        max_interval=0.01,
    )
    # As with Redis frozen before: no answer from Redis (read MySQL), never a copy.
    hits = local_hits()
    assert await cache.session_view(user_id, "s") is None
    assert local_hits() == hits


async def test_a_freeze_behind_the_heartbeats_write_costs_a_read_one_timeout(
    data_stores: DataStores, primary: Database, pause_redis: Callable[[], None]
) -> None:
    """Redis freezes while the heartbeat's SET is the oldest command on the invalidation
    connection: the waiting read learns it within one Redis timeout, not after the barrier's
    timeout and then an MGET's."""
    timeout = 0.5
    cache = new_cache(data_stores, primary, timeout=timeout, local_interval=4.0)
    await cache.start()
    try:
        user_id, _ = await copied_profile(cache, primary)
        copies = copies_of(cache)
        await wait_until_async(lambda: not copies._beat_out, 10.0, "no heartbeat out")
        pause_redis()
        await wait_until_async(
            lambda: copies._beat_out, 10.0, "the next SET sent", interval=0.001, max_interval=0.001
        )
        assert copies.answering(), "the read below would not wait for a barrier"
        started = time.monotonic()
        assert await cache.session_view(user_id, "s") is None  # read MySQL
        assert time.monotonic() - started < 1.5 * timeout
    finally:
        data_stores.redis.process.resume()
        await cache.close()


# Keys one MSET changes: Redis pushes all their names in one message (under the reader's
# bounds per message: 100,000 elements, 8 MiB), which takes this replica longer than
# REDIS_TIMEOUT to read.
BURST_KEYS = 95_000
HEARTBEAT = 4.0
BARRIER_TIMEOUT = 0.05  # far less than the burst takes to read


async def test_a_burst_of_invalidations_is_no_redis_failure(
    data_stores: DataStores, redis: Redis
) -> None:
    """A barrier whose answer is queued behind invalidations this replica has not read yet: it
    is behind, Redis is not frozen. The read is a miss (it asks Redis), not a Redis timeout,
    which would open the breaker (`_mget`) though Redis answers."""
    run_id = (await redis.info("server"))["run_id"]
    copies = TrackedCopies(
        data_stores.redis_url,
        timeout=BARRIER_TIMEOUT,
        interval=HEARTBEAT,
        max_entries=100,
        max_age=3600.0,
        server_run_id=lambda: run_id,
    )
    copies.start()
    bursts = [
        [f"gh:w:burst-{secrets.token_hex(4)}:{key}" for key in range(BURST_KEYS)] for _ in range(2)
    ]
    try:
        await wait_until_async(copies.answering, 10.0, "the copies answer")
        key = profile_key(secrets.randbits(62))
        fill = copies.begin_fill([key])
        assert fill is not None
        copies.end_fill(fill, await redis.mget([key]))
        assert await copies.read([key]) == [None]
        proven = copies._proven_at
        await wait_until_async(lambda: copies._proven_at > proven, 10.0, "a heartbeat proven")
        # Right after a heartbeat: the next is HEARTBEAT / 2 away, so the barrier is the command
        # that waits behind the burst (each MSET's keys come in one message).
        for keys in bursts:
            await redis.mset(dict.fromkeys(keys, b"1"))
        try:
            assert await copies.read([key]) in (None, [None])
        except TimeoutError:
            pytest.fail("invalidations not read yet counted as a Redis timeout")
    finally:
        await copies.close()
        for keys in bursts:
            await redis.unlink(*keys)


async def test_a_redis_restarted_empty_cannot_revive_a_logged_out_session(
    store: AccountStore, cache: RedisCache, data_stores: DataStores
) -> None:
    user = await register(store)
    session_id = await log_in(store, user)
    await until_answering(cache)
    assert await store.session_profile(user.id, session_id) is not None

    async def answered_in_process() -> bool:
        # The copies answer only within a heartbeat of the last proof: one late beat on a busy
        # machine makes a single read a miss, so read until one is a hit.
        hits = local_hits()
        assert await store.session_profile(user.id, session_id) is not None
        return local_hits() > hits

    await wait_until_async(answered_in_process, 10.0, "the session answered in process")
    assert await store.revoke_session(user.id, session_id)
    assert await store.session_profile(user.id, session_id) is None
    await asyncio.to_thread(data_stores.redis.restart)  # the tombstone is gone
    copies = copies_of(cache)

    async def refused_and_answering() -> bool:
        # Reads reach the new server through the pool first: then the copies may answer.
        assert await store.session_profile(user.id, session_id) is None
        return copies.answering()

    await wait_until_async(refused_and_answering, 10.0, "the copies answer again")

    async def refused_in_process() -> bool:
        hits = local_hits()
        assert await store.session_profile(user.id, session_id) is None
        return local_hits() > hits

    await wait_until_async(refused_in_process, 10.0, "the revoked session answered in process")


def micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


async def test_a_chain_of_attributes_counts_toward_the_nesting_bound() -> None:
    """RESP3 attributes ('|') nest as aggregates do: a long chain of them ends the connection
    (_Lost), not the process's recursion limit."""
    described = reader_of(b"|1\r\n+key\r\n+value\r\n+x\r\n")
    assert await local_cache._read_message(described) == b"x"
    with pytest.raises(local_cache._Lost, match="nesting"):
        await local_cache._read_message(reader_of(b"|0\r\n" * 5000 + b"+x\r\n"))


async def test_an_unexpected_error_on_the_invalidation_connection_is_survived(
    data_stores: DataStores, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error while serving the connection (a bug) drops it and the copies, and the replica
    reconnects: the copies answer again."""
    run_id = (await redis.info("server"))["run_id"]
    copies = started_copies(data_stores.redis_url, lambda: run_id)
    try:
        await wait_until_async(copies.answering, 10.0, "the copies answer")
        before = await connection_id(redis, copies)
        invalidated = copies._invalidated
        failed: list[object] = []

        def failing_once(keys: object) -> None:
            if not failed:
                failed.append(keys)
                raise RuntimeError("a bug")
            invalidated(keys)

        monkeypatch.setattr(copies, "_invalidated", failing_once)
        await wait_until_async(lambda: failed, 10.0, "an invalidation (the heartbeat's) fails")

        async def reconnected_and_answering() -> bool:
            connection = await connection_id(redis, copies)
            return connection not in (None, before) and copies.answering()

        await wait_until_async(reconnected_and_answering, 10.0, "the copies answer again")
        assert copies._connection is not None and not copies._connection.done()
    finally:
        await copies.close()


async def test_a_key_name_that_is_not_utf8_keeps_the_connection_and_the_copies(
    data_stores: DataStores, redis: Redis
) -> None:
    """Any client may write such a name under a tracked prefix: its invalidation drops nothing."""
    run_id = (await redis.info("server"))["run_id"]
    copies = started_copies(data_stores.redis_url, lambda: run_id)
    odd = b"gh:p:\xff\xfe"
    kept, marker = profile_key(secrets.randbits(62)), profile_key(secrets.randbits(62))
    try:
        await wait_until_async(copies.answering, 10.0, "the copies answer")
        before = await connection_id(redis, copies)
        fill = copies.begin_fill([kept])
        assert fill is not None
        copies.end_fill(fill, [b"kept"])
        assert copies._entries[kept].value == b"kept"
        marked = copies.begin_fill([marker])
        assert marked is not None
        await redis.set(odd, b"x")
        await redis.set(marker, b"m")  # its invalidation comes after the odd name's
        await wait_until_async(
            lambda: marker not in copies._placeholders, 10.0, "the marker's invalidation"
        )
        assert kept in copies._entries, "the copies were dropped"
        assert await connection_id(redis, copies) == before, "the connection was dropped"
    finally:
        await redis.delete(odd, marker)
        await copies.close()


async def test_a_connection_to_another_server_than_the_pool_is_replaced(
    data_stores: DataStores, redis: Redis
) -> None:
    """After a failover that leaves the old server up, the pool reaches another server than
    the invalidation connection: the copies stop, and the connection is replaced (reaching
    the pool's server, so that the copies answer again)."""
    real = (await redis.info("server"))["run_id"]
    pool_sees = {"run_id": real}
    copies = started_copies(data_stores.redis_url, lambda: pool_sees["run_id"])
    try:
        await wait_until_async(copies.answering, 10.0, "the copies answer")
        before = await connection_id(redis, copies)
        pool_sees["run_id"] = "0" * 40  # the pool now reaches another server
        assert not copies.answering()

        async def replaced() -> bool:
            return await connection_id(redis, copies) not in (None, before)

        await wait_until_async(replaced, 10.0, "the invalidation connection replaced")
        pool_sees["run_id"] = real
        await wait_until_async(copies.answering, 10.0, "the copies answer again")
    finally:
        await copies.close()


async def test_a_pool_behind_the_connection_does_not_make_it_reconnect_at_every_beat(
    data_stores: DataStores, redis: Redis
) -> None:
    """Redis restarted and an idle replica's pool has not learnt the new server yet, while the
    invalidation connection has: reconnecting would find the same server again. The connection
    stays (the copies do not answer) until the pool catches up."""
    connections = (await redis.info("stats"))["total_connections_received"]
    copies = started_copies(data_stores.redis_url, lambda: "0" * 40)  # the old server's
    try:
        for _ in range(4):  # four heartbeats proven: each beat checks the servers first
            proven = copies._proven_at
            await wait_until_async(
                lambda proven=proven: copies._proven_at > proven, 10.0, "a heartbeat proven"
            )
        opened = (await redis.info("stats"))["total_connections_received"] - connections
        assert opened == 1
        assert not copies.answering()
    finally:
        await copies.close()


async def test_a_connection_that_strayed_to_another_server_is_replaced_in_time(
    data_stores: DataStores, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool never moved, yet the connection reaches another server (a route that pointed
    elsewhere when it was made): after the patience, the connection is replaced."""
    monkeypatch.setattr(local_cache, "SERVER_MISMATCH_PATIENCE", 1.0)
    copies = started_copies(data_stores.redis_url, lambda: "0" * 40)  # never this server
    try:
        await wait_until_async(lambda: copies._run_id is not None, 10.0, "the connection made")
        before = await connection_id(redis, copies)

        async def replaced() -> bool:
            return await connection_id(redis, copies) not in (None, before)

        await wait_until_async(replaced, 10.0, "the invalidation connection replaced")
    finally:
        await copies.close()


async def test_a_push_of_as_many_keys_as_the_element_bound_is_read() -> None:
    """The bound counts the names an invalidation carries, not the push's own two elements."""
    names = b"".join(b"$27\r\ngh:s:%022d\r\n" % i for i in range(local_cache._MAX_ELEMENTS))
    message = b">2\r\n$10\r\ninvalidate\r\n*%d\r\n" % local_cache._MAX_ELEMENTS + names
    value = await local_cache._read_message(reader_of(message))
    assert len(value.items[1]) == local_cache._MAX_ELEMENTS


async def test_one_message_is_bounded_in_total_bytes_and_elements() -> None:
    """The bounds hold for a message as a whole, not per element: a push of 64 bulk values of
    1 MiB each (each one allowed), or of two aggregates of 60,000 elements each, ends the
    connection."""
    bulk = b"$%d\r\n%s\r\n" % (local_cache._MAX_BULK, b"k" * local_cache._MAX_BULK)
    with pytest.raises(local_cache._Lost, match="too long"):
        await local_cache._read_message(
            reader_of(b">2\r\n$10\r\ninvalidate\r\n*64\r\n" + bulk * 64)
        )
    aggregate = b"*60000\r\n" + b":1\r\n" * 60_000
    with pytest.raises(local_cache._Lost, match="too long"):
        await local_cache._read_message(reader_of(b">2\r\n" + aggregate * 2))
    assert await local_cache._read_message(reader_of(aggregate)) == [1] * 60_000


async def test_a_new_cause_that_keeps_the_connection_from_opening_is_logged(
    data_stores: DataStores,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a connection was lost, every failure to open the next one was logged at debug, as a
    retry of the outage the loss had reported, whatever its cause: an ACL or a proxy that now
    refuses CLIENT TRACKING left the copies off for good without a word of why."""
    monkeypatch.setattr(local_cache, "_LOG_INTERVAL", 0.0)
    caplog.set_level(logging.INFO, logger=local_cache.__name__)
    run_id = (await redis.info("server"))["run_id"]
    copies = started_copies(data_stores.redis_url, lambda: run_id)
    try:
        await wait_until_async(copies.answering, 10.0, "the copies answer")
        await redis.execute_command("ACL", "SETUSER", "default", "-client|tracking")
        clients = [c for c in await redis.client_list() if c.get("name") == copies.client_name]
        await redis.execute_command("CLIENT", "KILL", "ID", clients[0]["id"])

        def refusal_logged() -> bool:
            return any(
                "cannot be opened" in record.getMessage() and "NOPERM" in record.getMessage()
                for record in caplog.records
                if record.levelno >= logging.INFO
            )

        await wait_until_async(refusal_logged, 5.0, "the refused tracking to be logged")
    finally:
        await redis.execute_command("ACL", "SETUSER", "default", "+client|tracking")
        await copies.close()


async def test_a_key_read_twice_in_one_fill_copies_each_key_its_own_value(
    data_stores: DataStores, redis: Redis
) -> None:
    """The values follow the read's keys in order, a key named twice included."""
    run_id = (await redis.info("server"))["run_id"]
    copies = steady_copies(data_stores.redis_url, run_id)
    try:
        await wait_until_async(copies.answering, 10.0, "the copies answer")
        first, second, third = (profile_key(secrets.randbits(62)) for _ in range(3))
        fill = copies.begin_fill([first, second, first, third])
        assert fill is not None
        copies.end_fill(fill, [b"1", b"2", b"1", b"3"])
        copied = {key: copy.value for key, copy in copies._entries.items()}
        assert copied == {first: b"1", second: b"2", third: b"3"}
    finally:
        await copies.close()


async def test_fills_that_overlap_keep_the_copy_of_the_first_to_end(
    data_stores: DataStores, redis: Redis
) -> None:
    """Each fill took a new placeholder, voiding every fill of the key still out: under
    steady overlapping misses (gh:since is in every read) none was ever kept."""
    run_id = (await redis.info("server"))["run_id"]
    copies = steady_copies(data_stores.redis_url, run_id)
    key = profile_key(secrets.randbits(62))
    try:
        await wait_until_async(copies.answering, 10.0, "the copies answer")
        first = copies.begin_fill([key])
        second = copies.begin_fill([key])  # begun while the first is out
        assert first is not None and second is not None
        copies.end_fill(first, [b"first"])
        copies.end_fill(second, [b"second"])
        assert copies._entries[key].value == b"first"
        # A change's invalidation still voids every fill begun before it.
        await redis.delete(key)
        stale = copies.begin_fill([key])
        assert stale is not None
        await redis.set(key, b"changed")
        await wait_until_async(
            lambda: key not in copies._placeholders, 10.0, "the change's invalidation"
        )
        copies.end_fill(stale, [b"before the change"])
        assert key not in copies._entries
    finally:
        await copies.close()


async def test_a_copy_answers_no_longer_than_its_max_age(
    data_stores: DataStores, redis: Redis
) -> None:
    """Redis expires a key when it is read, or when its sampling finds it: a copy answered from
    memory would outlive the entry's TTL while reads keep it hot, so a copy ages out too."""
    run_id = (await redis.info("server"))["run_id"]
    copies = steady_copies(data_stores.redis_url, run_id, max_age=1.0)
    key = profile_key(secrets.randbits(62))
    try:
        await wait_until_async(copies.answering, 10.0, "the copies answer")
        fill = copies.begin_fill([key])
        assert fill is not None
        copies.end_fill(fill, [b"copied"])
        assert await copies.read([key]) == [b"copied"]

        async def aged_out() -> bool:
            return await copies.read([key]) is None and copies.answering()

        await wait_until_async(aged_out, 10.0, "the copy to age out")
        assert copies._entries[key].value == b"copied"  # kept, not answered: Redis is asked
    finally:
        await copies.close()


async def test_a_heartbeat_redis_refuses_keeps_the_connection_and_is_logged_once(
    data_stores: DataStores,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis refuses writes when full (OOM), read-only or by an ACL: the heartbeat's refusal
    dropped the connection, and every reconnect found it again, four times a second, a line
    each. The copies stop answering; the connection stays, and the cause is said once."""
    monkeypatch.setattr(local_cache, "_LOG_INTERVAL", 0.0)
    caplog.set_level(logging.DEBUG, logger=local_cache.__name__)
    run_id = (await redis.info("server"))["run_id"]
    user, password = f"copies-{secrets.token_hex(4)}", secrets.token_hex(16)
    # Its own user, so that no other client of this Redis is refused anything.
    await redis.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    url = data_stores.redis_url.replace("redis://", f"redis://{user}:{password}@", 1)
    copies = started_copies(url, lambda: run_id, timeout=2.0)
    try:
        await wait_until_async(copies.answering, 10.0, "the copies answer")
        connection = await connection_id(redis, copies)
        await redis.execute_command("ACL", "SETUSER", user, "-set")

        async def refused_beats() -> int:
            entries = await redis.acl_log()
            return sum(int(entry["count"]) for entry in entries if entry["username"] == user)

        async def five_refused() -> bool:
            return await refused_beats() >= 5

        await wait_until_async(five_refused, 10.0, "five heartbeats refused")
        assert not copies.answering()
        assert await connection_id(redis, copies) == connection
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        refusals = [line for line in lines if "refuses the heartbeat" in line]
        assert len(refusals) == 1 and "NOPERM" in refusals[0], lines
        assert not any("connection lost" in line for line in lines), lines

        await redis.execute_command("ACL", "SETUSER", user, "+set")
        await wait_until_async(copies.answering, 10.0, "the copies answer again")
        assert await connection_id(redis, copies) == connection
    finally:
        await copies.close()
        await redis.execute_command("ACL", "DELUSER", user)


async def test_heartbeats_answered_without_their_invalidation_replace_the_connection(
    data_stores: DataStores,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server (a proxy) that takes CLIENT TRACKING and passes no push: each heartbeat sent
    was remembered, unproven, for the life of the connection. The connection is replaced; one
    line says why, not one per replacement."""
    monkeypatch.setattr(local_cache, "_LOG_INTERVAL", 0.0)
    monkeypatch.setattr(local_cache, "RECONNECT_SECONDS", 0.05)
    caplog.set_level(logging.DEBUG, logger=local_cache.__name__)
    run_id = (await redis.info("server"))["run_id"]
    timeout = 1.0
    copies = started_copies(data_stores.redis_url, lambda: run_id, timeout=timeout)
    pushed = copies._invalidated
    handshakes = 0
    handshake = copies._handshake

    def no_heartbeat_pushed(keys: Any) -> None:
        if isinstance(keys, list):
            keys = [key for key in keys if not key.startswith(b"gh:hb:")]
        pushed(keys)

    async def counted_handshake(*args: Any) -> str | None:
        nonlocal handshakes
        handshakes += 1
        return await handshake(*args)

    monkeypatch.setattr(copies, "_invalidated", no_heartbeat_pushed)
    monkeypatch.setattr(copies, "_handshake", counted_handshake)
    try:
        await wait_until_async(lambda: handshakes >= 4, 20.0, "three replacements")
        assert not copies.answering()
        assert len(copies._beats_pending) <= 2 + int(timeout / (LOCAL_CACHE_INTERVAL / 2))
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        lost = [line for line in lines if "no invalidation comes" in line]
        assert len(lost) == 1, lines
    finally:
        await copies.close()
