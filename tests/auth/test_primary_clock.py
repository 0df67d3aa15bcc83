"""A primary whose clock is behind the heartbeat it inherited: a failover to a host whose clock
is behind the old primary's, or a clock stepped back. The heartbeat row then holds a time the
primary's NOW(6) has not reached yet, and a replica that applied it must not count as holding
the writes made since (read-your-writes, and the flag of a degraded logout).

These tests push the module's heartbeat an hour ahead and keep their Redis keys in a database of
their own, so that no other test sees either.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import bcrypt
import pytest
from redis.asyncio import Redis

from devstack import DataStores
from services.auth.accounts import AccountStore
from services.auth.store.cache import RedisCache, profile_key
from services.auth.store.database import Database
from services.auth.store.freshness import HeartbeatWriter, ReplicaFreshness
from services.auth.store.revocations import FlagNotReplicated, PendingTombstones

INTERVAL = 0.05
REDIS_DATABASE = 9  # not the one the other tests and the stack use: gh:since goes ahead here
PASSWORD_HASH = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(4))
_AHEAD = (
    "UPDATE replication_heartbeat SET beat = GREATEST(beat, NOW(6) + INTERVAL 1 HOUR) WHERE id = 1"
)


@pytest.fixture
def own_redis_url(data_stores: DataStores) -> str:
    return f"{data_stores.redis_url.rsplit('/', 1)[0]}/{REDIS_DATABASE}"


@pytest.fixture
async def own_redis(own_redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis_url, socket_timeout=5.0)
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def clock_behind(primary: Database, data_stores: DataStores) -> None:
    """The primary's clock is an hour behind the last heartbeat, and the replica holds that
    heartbeat."""
    await primary.execute("test_clock_behind", _AHEAD)
    await asyncio.to_thread(data_stores.replication.wait_caught_up)


async def caught_up(data_stores: DataStores) -> None:
    await asyncio.to_thread(data_stores.replication.wait_caught_up)


async def test_a_replica_holding_a_heartbeat_from_ahead_does_not_serve_later_writes(
    clock_behind: None,
    primary: Database,
    replica: Database,
    own_redis_url: str,
    own_redis: Redis,
    data_stores: DataStores,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    cache = RedisCache(own_redis_url, timeout=0.2, profile_ttl=3600, primary=primary)
    freshness = ReplicaFreshness(primary, [replica], INTERVAL)
    store = AccountStore(
        primary,
        [],  # the fixtures close the pools
        cache,
        HeartbeatWriter(primary, INTERVAL),
        freshness,
        PendingTombstones(primary, cache, INTERVAL, freshness=freshness),
    )
    await store.start()
    try:
        user = await store.create_user(
            secrets.randbits(62), f"user_{secrets.token_hex(5)}", "Old", PASSWORD_HASH, 1
        )
        session_id = secrets.token_urlsafe(16)
        await store.create_session(
            user.id, session_id, datetime.now(UTC) + timedelta(hours=1), password_changes=0
        )
        await caught_up(data_stores)
        await stop_sql_thread()  # the replica keeps the heartbeat from ahead, and "Old"

        updated = await store.update_profile(user.id, session_id, nickname="New")
        assert updated is not None and updated.nickname == "New"
        await own_redis.delete(profile_key(user.id))  # only MySQL can answer now

        read = await store.session_profile(user.id, session_id)
        assert read is not None and read.nickname == "New", "the author reads their own write"
    finally:
        await store.close()


async def test_a_degraded_logout_is_not_confirmed_by_a_heartbeat_from_ahead(
    clock_behind: None,
    primary: Database,
    replica: Database,
    own_redis_url: str,
    own_redis: Redis,
    data_stores: DataStores,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    cache = RedisCache(own_redis_url, timeout=0.2, profile_ttl=3600, primary=primary)
    freshness = ReplicaFreshness(primary, [replica], INTERVAL)
    heartbeat = HeartbeatWriter(primary, INTERVAL)
    pending = PendingTombstones(primary, cache, INTERVAL, freshness=freshness, confirm_timeout=0.5)
    user_id, session_id = secrets.randbits(62), secrets.token_urlsafe(16)
    await primary.execute(
        "test_user",
        "INSERT INTO users (id, username, nickname, password_hash, pepper_version, version,"
        " created_at, updated_at) VALUES (%s, %s, 'Nick', %s, 1, 1, NOW(6), NOW(6))",
        (user_id, f"user_{secrets.token_hex(5)}", PASSWORD_HASH),
    )
    await primary.execute(
        "test_session",
        "INSERT INTO sessions (id, user_id, created_at, expires_at, revoked_at)"
        " VALUES (%s, %s, NOW(6), %s, NOW(6))",
        (session_id, user_id, datetime.now(UTC) + timedelta(hours=1)),
    )
    await caught_up(data_stores)
    freshness.start()
    heartbeat.start()
    try:
        await stop_sql_thread()  # the replica will never hold the flag
        with pytest.raises(FlagNotReplicated):
            await pending.flag(session_id)
        flagged = await replica.fetch_one(
            "test_flag", "SELECT tombstone_pending FROM sessions WHERE id = %s", (session_id,)
        )
        assert flagged == {"tombstone_pending": 0}, "the replica indeed lacks the flag"
    finally:
        await heartbeat.close()
        await freshness.close()
