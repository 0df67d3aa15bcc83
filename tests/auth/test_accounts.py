"""AccountStore end to end against the real primary, its replica and Redis, healthy and broken."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import bcrypt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from devstack import DataStores
from devstack.ports import HOST, free_port
from services.auth.accounts import (
    AccountStore,
    Credentials,
    SessionDevice,
    UsernameTaken,
    UserRecord,
)
from services.auth.settings import AuthSettings
from services.auth.store.cache import (
    SINCE_KEY,
    TOMBSTONE,
    RedisCache,
    login_key,
    profile_key,
    session_key,
    write_key,
)
from services.auth.store.database import Database
from services.auth.store.freshness import HeartbeatWriter, ReplicaFreshness
from services.auth.store.revocations import PendingTombstones
from tests.auth.conftest import new_cache, new_store, redis_errors
from tests.auth.tcp_proxy import TcpProxy

Eventually = Callable[[Callable[[], Awaitable[bool]], str], Awaitable[None]]

HEARTBEAT_INTERVAL = 0.05

PASSWORD_HASH = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(4))
EMOJI_NICKNAME = "Zoë 🦊👩🏽‍💻"


def new_username() -> str:
    return f"user_{secrets.token_hex(5)}"


async def register(
    store: AccountStore, username: str | None = None, nickname: str = "Nick"
) -> UserRecord:
    return await store.create_user(
        secrets.randbits(62), username or new_username(), nickname, PASSWORD_HASH, 1
    )


async def log_in(
    store: AccountStore, user: UserRecord, lifetime: timedelta = timedelta(hours=1)
) -> str:
    session_id = secrets.token_urlsafe(16)
    await store.create_session(
        user.id, session_id, datetime.now(UTC) + lifetime, password_changes=0
    )
    return session_id


def reads(target: str) -> float:
    return REGISTRY.get_sample_value("gatehouse_auth_db_reads_total", {"target": target}) or 0.0


def settings(primary_dsn: str, redis_url: str, **overrides: object) -> AuthSettings:
    values: dict[str, object] = {
        "mysql_primary_dsn": primary_dsn,
        "redis_url": redis_url,
        "peppers": {1: b"unused-in-these-tests"},
        "jwt_private_key": Ed25519PrivateKey.generate(),
        "device_cookie_secret": "unused-in-these-tests-but-32-characters-long",
        "heartbeat_interval": 0.05,
        "mysql_timeout": 2.0,
        "redis_timeout": 0.2,
        "migrate_on_start": False,
    }
    values.update(overrides)
    return AuthSettings(**values)  # type: ignore[arg-type]


async def replica_row(
    data_stores: DataStores, database_name: str, sql: str, args: tuple[object, ...]
) -> dict[str, object]:
    """What the replica holds, read as root (bypassing the service)."""
    rows = await asyncio.to_thread(
        data_stores.replica.execute, sql.replace("{db}", f"`{database_name}`"), args
    )
    assert rows, "the replica lacks the row"
    return rows[0]


async def wait_until_replica_covers(
    primary: Database, replica: Database, freshness: ReplicaFreshness, eventually: Eventually
) -> None:
    """Until reads for everything written so far may go to the replica."""
    written = await primary.server_time()

    async def covered() -> bool:
        applied = freshness.applied_through(replica)
        return applied is not None and applied >= written

    await eventually(covered, "the replica's applied heartbeat passes the last write")


async def test_create_user_stores_what_it_was_given(store: AccountStore) -> None:
    username = new_username()
    before = datetime.now(UTC) - timedelta(seconds=5)
    user = await register(store, username, nickname="Alice A.")
    assert (user.username, user.nickname, user.avatar_key, user.version) == (
        username,
        "Alice A.",
        None,
        1,
    )
    assert before < user.created_at == user.updated_at < datetime.now(UTC) + timedelta(seconds=5)
    credentials = await store.find_credentials(username)
    assert credentials == Credentials(user, PASSWORD_HASH, 1)
    assert PASSWORD_HASH.decode() not in repr(credentials)


async def test_usernames_are_unique_regardless_of_case_and_kept_as_registered(
    store: AccountStore,
) -> None:
    username = f"Alice_{secrets.token_hex(4)}"
    first = await register(store, username)
    with pytest.raises(UsernameTaken, match="is taken"):
        await register(store, username.lower())
    with pytest.raises(UsernameTaken):
        await register(store, username.upper())
    credentials = await store.find_credentials(username.upper())
    assert credentials is not None
    assert credentials.user == first


async def test_an_emoji_nickname_round_trips_through_mysql_the_replica_and_redis(
    store: AccountStore, redis: Redis, data_stores: DataStores, database_name: str
) -> None:
    user = await register(store, nickname=EMOJI_NICKNAME)
    session_id = await log_in(store, user)
    cached = await store.session_profile(user.id, session_id)
    await redis.delete(profile_key(user.id), session_key(session_id))
    from_mysql = await store.session_profile(user.id, session_id)
    assert cached is not None and from_mysql is not None
    assert cached.nickname == from_mysql.nickname == EMOJI_NICKNAME
    await asyncio.to_thread(data_stores.replication.wait_caught_up)
    row = await replica_row(
        data_stores, database_name, "SELECT nickname FROM {db}.users WHERE id = %s", (user.id,)
    )
    assert row["nickname"] == EMOJI_NICKNAME


async def test_credentials_of_unknown_or_impossible_usernames_are_none(store: AccountStore) -> None:
    assert await store.find_credentials("nobody_" + secrets.token_hex(4)) is None
    assert await store.find_credentials("ålice") is None
    assert await store.find_credentials("x" * 200) is None
    assert await store.find_credentials("") is None


async def test_a_name_with_trailing_spaces_names_no_account(store: AccountStore) -> None:
    """The username column's collation pads with spaces ('bob ' = 'bob'): an operator's
    `gatehouse users show|lock|delete 'bob '` must not act on bob."""
    user = await register(store)
    padded = user.username + "  "
    assert await store.find_credentials(padded) is None
    assert await store.account_summary(padded) is None
    assert await store.lock_account(padded) is None
    assert await store.unlock_account(padded) is None
    assert await store.delete_named_account(padded, free_username=False) is None
    summary = await store.account_summary(user.username)
    assert summary is not None and summary.locked_at is None


async def test_a_user_the_replica_lacks_is_found_on_the_primary(
    store: AccountStore, stop_sql_thread: Callable[[], Awaitable[None]]
) -> None:
    await stop_sql_thread()
    user = await register(store)
    replica_reads, primary_reads = reads("replica"), reads("primary")
    credentials = await store.find_credentials(user.username)
    assert credentials is not None and credentials.user == user
    assert (reads("replica"), reads("primary")) == (replica_reads + 1, primary_reads + 1)


async def test_credentials_include_the_users_last_write_despite_a_stalled_replica(
    store: AccountStore,
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    user = await register(store, nickname="Old")
    session_id = await log_in(store, user)
    await wait_until_replica_covers(primary, replica, freshness, eventually)
    await stop_sql_thread()
    renamed = await store.update_profile(user.id, session_id, nickname="New")
    new_hash = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(5))
    await store.rehash_password(user.id, new_hash, 2)
    credentials = await store.find_credentials(user.username)
    assert renamed is not None and credentials is not None
    assert credentials.user.nickname == "New"
    assert credentials.user.version == renamed.version + 1
    assert (credentials.password_hash, credentials.pepper_version) == (new_hash, 2)
    assert await store.session_profile(user.id, session_id) == credentials.user


async def test_session_profile_answers_the_live_session_of_its_user_only(
    store: AccountStore, redis: Redis
) -> None:
    user = await register(store)
    other = await register(store)
    live = await log_in(store, user)
    expired = await log_in(store, user, lifetime=timedelta(milliseconds=-1))
    assert await store.session_profile(user.id, live) == user
    assert await store.session_profile(other.id, live) is None
    assert await store.session_profile(user.id, expired) is None
    assert await store.session_profile(user.id, secrets.token_urlsafe(16)) is None
    await redis.delete(session_key(live), profile_key(user.id))
    assert await store.session_profile(other.id, live) is None  # from MySQL this time
    assert await store.session_profile(user.id, live) == user


@pytest.mark.parametrize("session_id", ["", "é" * 22, "x" * 65, "a'; DROP TABLE users; --"])
async def test_malformed_session_ids_are_refused_quietly(
    store: AccountStore, session_id: str
) -> None:
    user = await register(store)
    assert await store.session_profile(user.id, session_id) is None
    assert await store.update_profile(user.id, session_id, nickname="x") is None
    assert await store.revoke_session(user.id, session_id) is False


async def test_update_profile_changes_only_what_is_given(store: AccountStore) -> None:
    user = await register(store, nickname="Before")
    session_id = await log_in(store, user)
    with_avatar = await store.update_profile(user.id, session_id, avatar_key="avatars/1.png")
    assert with_avatar is not None
    assert (with_avatar.nickname, with_avatar.avatar_key, with_avatar.version) == (
        "Before",
        "avatars/1.png",
        2,
    )
    renamed = await store.update_profile(user.id, session_id, nickname="After")
    assert renamed is not None
    assert (renamed.nickname, renamed.avatar_key, renamed.version) == ("After", "avatars/1.png", 3)
    assert renamed.updated_at >= with_avatar.updated_at > user.updated_at
    cleared = await store.update_profile(user.id, session_id, avatar_key="")
    assert cleared is not None and cleared.avatar_key is None
    assert await store.update_profile(user.id, session_id) == cleared
    assert await store.session_profile(user.id, session_id) == cleared


async def test_update_profile_needs_a_live_session_of_the_user(store: AccountStore) -> None:
    user = await register(store, nickname="Kept")
    other = await register(store)
    session_id = await log_in(store, user)
    expired = await log_in(store, user, lifetime=timedelta(milliseconds=-1))
    assert await store.update_profile(other.id, session_id, nickname="Stolen") is None
    assert await store.update_profile(user.id, expired, nickname="Late") is None
    assert await store.revoke_session(user.id, session_id)
    assert await store.update_profile(user.id, session_id, nickname="Gone") is None
    credentials = await store.find_credentials(user.username)
    assert credentials is not None  # the user is still there, unchanged:
    fresh_session = await log_in(store, user)
    profile = await store.session_profile(user.id, fresh_session)
    assert profile is not None and profile.nickname == "Kept" and profile.version == 1


async def test_revoke_session_is_idempotent_and_only_for_its_user(store: AccountStore) -> None:
    user = await register(store)
    other = await register(store)
    session_id = await log_in(store, user)
    assert await store.revoke_session(other.id, session_id) is False
    assert await store.session_profile(user.id, session_id) == user
    assert await store.revoke_session(user.id, session_id) is True
    assert await store.revoke_session(user.id, session_id) is True
    assert await store.session_profile(user.id, session_id) is None
    assert await store.revoke_session(user.id, secrets.token_urlsafe(16)) is False


async def test_a_new_session_is_stored_with_its_device_and_noted_after_its_commit(
    store: AccountStore, primary: Database, redis: Redis
) -> None:
    user = await register(store)
    expires_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    session_id = secrets.token_urlsafe(16)
    await store.create_session(
        user.id,
        session_id,
        expires_at,
        SessionDevice(user_agent="agent/1.0", ip="192.0.2.7"),
        password_changes=0,
    )
    row = await primary.fetch_one(
        "stored session",
        "SELECT user_id, created_at, expires_at, user_agent, ip, revoked_at FROM sessions"
        " WHERE id = %s",
        (session_id,),
    )
    assert row is not None
    assert (row["user_id"], row["expires_at"], row["user_agent"], row["ip"]) == (
        user.id,
        expires_at,
        "agent/1.0",
        "192.0.2.7",
    )
    assert row["revoked_at"] is None
    # The session list waits for the login's commit time: it must cover the stored row.
    noted = int(await redis.get(login_key(user.id)))
    assert noted >= (row["created_at"] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )
    assert [s.id for s in await store.live_sessions(user.id)] == [session_id]


async def primary_commits(primary: Database) -> int:
    row = await primary.fetch_one("commits", "SHOW GLOBAL STATUS LIKE 'Com_commit'")
    assert row is not None
    return int(row["Value"])


async def test_storing_a_login_opens_no_transaction(store: AccountStore, primary: Database) -> None:
    """One autocommitted statement, not BEGIN, SELECT, INSERT, COMMIT: the round trips a
    login spends on the primary outside its password check."""
    user = await register(store)
    logins = 20
    before = await primary_commits(primary)
    for _ in range(logins):
        await log_in(store, user)
    assert await primary_commits(primary) - before < logins
    assert len(await store.live_sessions(user.id)) == logins


async def redis_commands_run(redis: Redis) -> int:
    """Commands a read may send: MGET, or the barrier PING when the in-process copies answer.
    Not the copies' heartbeat SETs, which run on their own clock."""
    stats = await redis.info("commandstats")
    return sum(
        int(stat["calls"])
        for name, stat in stats.items()
        if name in ("cmdstat_mget", "cmdstat_ping")
    )


class RelianceOnRedis:
    """Whether the reads made since `begin` could rely on Redis: every
    `PendingTombstones.refresh` answered True (the revocation poll succeeded within its lease,
    3 x 0.05 s here) and the cache's breaker stayed closed, with no Redis error counted. A
    loaded machine can break either (a late poll; a Redis command past its 0.2 s timeout, which
    opens the breaker for a second): the reads then go to MySQL, as they must, so a test about
    reads that rely on Redis tries again. It checks the first attempt that could, outside the
    wait (which would take a failed assertion for "not yet")."""

    def __init__(self, cache: RedisCache, monkeypatch: pytest.MonkeyPatch) -> None:
        self._cache = cache
        self._refreshes: list[bool] = []
        self._errors = 0.0
        self._breaker_was_open = False
        refresh = PendingTombstones.refresh

        async def recorded(pending: PendingTombstones) -> bool:
            answer = await refresh(pending)
            self._refreshes.append(answer)
            return answer

        monkeypatch.setattr(PendingTombstones, "refresh", recorded)

    def begin(self) -> None:
        self._refreshes.clear()
        self._errors = redis_errors()
        self._breaker_was_open = self._cache.breaker_open

    def held(self, refreshes: int) -> bool:
        """Whether the reads since `begin`, which asked `refreshes` times, could rely on Redis."""
        return (
            self._refreshes == [True] * refreshes
            and not self._breaker_was_open
            and not self._cache.breaker_open
            and redis_errors() == self._errors
        )


def profile_hits() -> float:
    return (
        REGISTRY.get_sample_value(
            "gatehouse_auth_cache_lookups_total", {"cache": "profile", "result": "hit"}
        )
        or 0.0
    )


async def test_a_cached_profile_costs_one_redis_round_trip_and_no_sql(
    store: AccountStore, redis: Redis, eventually: Eventually, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = await register(store)
    session_id = await log_in(store, user)
    assert await store.session_profile(user.id, session_id) == user  # the cache is warm
    reliance = RelianceOnRedis(store.cache, monkeypatch)
    costs: list[tuple[object, float, float, float]] = []

    async def one_read_relying_on_redis() -> bool:
        commands, sql_reads = await redis_commands_run(redis), reads("replica") + reads("primary")
        hits = profile_hits()
        reliance.begin()
        profile = await store.session_profile(user.id, session_id)
        if not reliance.held(1):
            return False  # this read had to go to MySQL
        costs.append(
            (
                profile,
                await redis_commands_run(redis) - commands,
                reads("replica") + reads("primary") - sql_reads,
                profile_hits() - hits,
            )
        )
        return True

    await eventually(one_read_relying_on_redis, "a read relies on Redis")
    # The first read that relied on Redis: one MGET or one barrier PING, no SQL, a cache hit.
    assert costs == [(user, 1, 0, 1)]


async def test_a_caught_up_replica_serves_reads(
    store: AccountStore,
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    redis: Redis,
    eventually: Eventually,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = await register(store)
    session_id = await log_in(store, user)
    await wait_until_replica_covers(primary, replica, freshness, eventually)
    reliance = RelianceOnRedis(store.cache, monkeypatch)
    answered: list[tuple[object, object, float, float]] = []

    async def reads_relying_on_redis() -> bool:
        await redis.delete(profile_key(user.id), session_key(session_id))
        replica_reads, primary_reads = reads("replica"), reads("primary")
        reliance.begin()
        profile = await store.session_profile(user.id, session_id)
        credentials = await store.find_credentials(user.username)
        if not reliance.held(2):
            return False  # a read had to go to the primary
        answered.append(
            (
                profile,
                credentials.user if credentials is not None else None,
                reads("replica") - replica_reads,
                reads("primary") - primary_reads,
            )
        )
        return True

    await eventually(reads_relying_on_redis, "both reads rely on Redis")
    # The first pair that relied on Redis: both read from the replica, none from the primary.
    assert answered == [(user, user, 2, 0)]


async def test_a_replica_too_slow_to_answer_hands_the_read_to_the_primary(
    primary: Database,
    replica_dsn: str,
    cache: RedisCache,
    redis: Redis,
    data_stores: DataStores,
    database_name: str,
    eventually: Eventually,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_replica = await Database.open(replica_dsn, role="replica", pool_size=1, timeout=0.3)
    freshness = ReplicaFreshness(primary, [slow_replica], HEARTBEAT_INTERVAL)
    heartbeat = HeartbeatWriter(primary, HEARTBEAT_INTERVAL)
    pending = PendingTombstones(primary, cache, HEARTBEAT_INTERVAL)
    store = AccountStore(primary, [slow_replica], cache, heartbeat, freshness, pending)
    await store.start()
    locker = await asyncio.to_thread(data_stores.replica.connect)
    try:
        user = await register(store)
        session_id = await log_in(store, user)
        await wait_until_replica_covers(primary, slow_replica, freshness, eventually)
        await asyncio.to_thread(locker.query, f"LOCK TABLES `{database_name}`.sessions WRITE")
        reliance = RelianceOnRedis(cache, monkeypatch)
        answered: list[tuple[object, float, float]] = []

        async def a_read_relying_on_redis() -> bool:
            await redis.delete(profile_key(user.id), session_key(session_id))
            replica_reads, primary_reads = reads("replica"), reads("primary")
            reliance.begin()
            profile = await store.session_profile(user.id, session_id)
            if not reliance.held(1):
                return False  # the read went to the primary at once
            answered.append(
                (profile, reads("replica") - replica_reads, reads("primary") - primary_reads)
            )
            return True

        await eventually(a_read_relying_on_redis, "a read relies on Redis")
        # The first read that relied on Redis: tried on the replica, answered by the primary.
        assert answered == [(user, 1, 1)]
    finally:
        await asyncio.to_thread(locker.close)  # unlocks
        await store.close()


async def test_read_your_writes_with_a_stalled_replica(
    store: AccountStore,
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    redis: Redis,
    data_stores: DataStores,
    database_name: str,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
    stop_redis: Callable[[], Awaitable[None]],
) -> None:
    user = await register(store, nickname="Old")
    session_id = await log_in(store, user)
    await wait_until_replica_covers(primary, replica, freshness, eventually)
    await stop_sql_thread()

    assert await store.update_profile(user.id, session_id, nickname="New") is not None
    stale = await replica_row(
        data_stores, database_name, "SELECT nickname FROM {db}.users WHERE id = %s", (user.id,)
    )
    assert stale["nickname"] == "Old"  # a replica read would be wrong

    profile = await store.session_profile(user.id, session_id)  # from the cache
    assert profile is not None and profile.nickname == "New"
    await redis.delete(profile_key(user.id), session_key(session_id))
    profile = await store.session_profile(user.id, session_id)  # from the primary, refilled
    assert profile is not None and profile.nickname == "New"

    await stop_redis()
    assert await store.update_profile(user.id, session_id, nickname="Newer") is not None
    profile = await store.session_profile(user.id, session_id)  # Redis is gone: the primary
    assert profile is not None and profile.nickname == "Newer"


async def test_a_stale_replica_read_racing_a_logout_cannot_revive_the_session(
    store: AccountStore,
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    redis: Redis,
    data_stores: DataStores,
    database_name: str,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    user = await register(store)
    session_id = await log_in(store, user)
    await wait_until_replica_covers(primary, replica, freshness, eventually)
    await redis.delete(
        profile_key(user.id), session_key(session_id)
    )  # the next read misses the cache
    await stop_sql_thread()  # the replica will show the session live after the logout

    # Hold the reader on the replica (table lock) until the logout is done.
    locker = await asyncio.to_thread(data_stores.replica.connect)
    try:
        await asyncio.to_thread(locker.query, f"LOCK TABLES `{database_name}`.sessions WRITE")
        reader = asyncio.create_task(store.session_profile(user.id, session_id))

        async def reader_waits_on_the_replica() -> bool:
            rows = await asyncio.to_thread(
                data_stores.replica.execute,
                "SELECT ID FROM information_schema.PROCESSLIST"
                " WHERE DB = %s AND STATE LIKE 'Waiting for table%%'",
                (database_name,),
            )
            return bool(rows)

        await eventually(
            reader_waits_on_the_replica, "the reader's query waits for the locked table"
        )
        assert await store.revoke_session(user.id, session_id)
        await asyncio.to_thread(locker.query, "UNLOCK TABLES")
    finally:
        await asyncio.to_thread(locker.close)

    stale_answer = await reader
    assert (
        stale_answer == user
    )  # the race happened: the reader saw the session live, then tried to refill
    assert await redis.get(session_key(session_id)) == b"R"
    assert await store.session_profile(user.id, session_id) is None


async def test_a_redis_restart_cannot_revive_a_revoked_session(
    store: AccountStore,
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    redis: Redis,
    data_stores: DataStores,
    database_name: str,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    user = await register(store)
    session_id = await log_in(store, user)
    await wait_until_replica_covers(primary, replica, freshness, eventually)
    await stop_sql_thread()
    assert await store.revoke_session(user.id, session_id)
    await asyncio.to_thread(data_stores.redis.restart)  # the tombstone is gone

    stale = await replica_row(
        data_stores,
        database_name,
        "SELECT revoked_at FROM {db}.sessions WHERE id = %s",
        (session_id,),
    )
    assert stale["revoked_at"] is None  # the replica still shows the session live
    assert await store.session_profile(user.id, session_id) is None
    assert await store.session_profile(user.id, session_id) is None
    assert await redis.get(session_key(session_id)) == b"R"  # refilled from the primary


@pytest.mark.usefixtures("evicting_redis")
async def test_a_redis_that_may_evict_cannot_revive_a_session_whose_records_it_evicted(
    data_stores: DataStores,
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    redis: Redis,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    """Memory pressure under volatile-lru evicts a logout's tombstone and the user's gh:w (the
    keys with a TTL). A replica whose SQL thread lags then shows the session live; read there,
    its row was refilled as a live entry stamped after gh:since, and the session was valid
    again until it expired, the replica caught up or not."""
    cache = new_cache(data_stores, primary)  # connects to a Redis that may evict
    await cache.start()
    store = new_store(primary, replica, cache, freshness)
    await store.start()
    try:
        user = await register(store)
        session_id = await log_in(store, user)
        await wait_until_replica_covers(primary, replica, freshness, eventually)
        await stop_sql_thread()
        assert await store.end_session(user.id, session_id)
        await redis.delete(session_key(session_id), write_key(user.id))  # evicted
        assert await store.session_profile(user.id, session_id) is None
        assert await store.session_profile(user.id, session_id) is None
    finally:
        await store.close()


@pytest.fixture
async def redis_link(data_stores: DataStores) -> AsyncIterator[TcpProxy]:
    """The network between `cut_off_store` and Redis, which a test can cut."""
    proxy = await TcpProxy.start(HOST, data_stores.redis.port)
    yield proxy
    await proxy.close()


@pytest.fixture
async def cut_off_store(
    primary_dsn: str, replica_dsn: str, redis_link: TcpProxy
) -> AsyncIterator[AccountStore]:
    """Another auth replica over the same databases, with its own pools, reaching Redis only
    through `redis_link`."""
    account_store = await AccountStore.open(
        settings(
            primary_dsn, f"redis://{HOST}:{redis_link.port}/0", mysql_replica_dsns=(replica_dsn,)
        )
    )
    yield account_store
    await account_store.close()


async def tombstone_pending(primary: Database, session_id: str) -> bool:
    row = await primary.fetch_one(
        "test_flag", "SELECT tombstone_pending FROM sessions WHERE id = %s", (session_id,)
    )
    assert row is not None
    return bool(row["tombstone_pending"])


async def test_a_logout_cut_off_from_redis_holds_where_redis_still_says_active(
    primary: Database,
    replica: Database,
    cache: RedisCache,
    freshness: ReplicaFreshness,
    redis: Redis,
    redis_link: TcpProxy,
    cut_off_store: AccountStore,
    eventually: Eventually,
) -> None:
    # Replica B reaches Redis. Its poll for flagged sessions is driven by hand (its loop's
    # interval is an hour), so nothing but that poll, and no repair by B, stands between B and
    # the stale "active" entry.
    b_pending = PendingTombstones(primary, cache, 3600.0)
    heartbeat = HeartbeatWriter(primary, HEARTBEAT_INTERVAL)
    b = AccountStore(primary, [replica], cache, heartbeat, freshness, b_pending)
    await b.start()
    a = cut_off_store
    try:
        user = await register(b)
        session_id = await log_in(b, user)
        assert await b.session_profile(user.id, session_id) == user
        active_entry = await redis.get(session_key(session_id))
        assert active_entry not in (None, TOMBSTONE)

        redis_link.cut()
        assert await a.revoke_session(user.id, session_id)
        assert await redis.get(session_key(session_id)) == active_entry  # no tombstone
        await b_pending.poll()  # B's first poll since the logout
        assert await b.session_profile(user.id, session_id) is None
        assert await b.update_profile(user.id, session_id, nickname="Back") is None
        assert await a.session_profile(user.id, session_id) is None

        redis_link.restore()

        async def repaired_by_a() -> bool:
            tombstone = await redis.get(session_key(session_id)) == TOMBSTONE
            return tombstone and not await tombstone_pending(primary, session_id)

        await eventually(repaired_by_a, "A writes the tombstone it owes and clears the flag")
        await b_pending.poll()
        assert not b_pending.includes(session_id)
        assert await b.session_profile(user.id, session_id) is None
        assert await a.session_profile(user.id, session_id) is None
    finally:
        await b.close()


async def test_a_replica_that_reaches_redis_writes_the_tombstone_a_cut_off_logout_owes(
    store: AccountStore,
    primary: Database,
    redis: Redis,
    redis_link: TcpProxy,
    cut_off_store: AccountStore,
    eventually: Eventually,
) -> None:
    user = await register(store)
    session_id = await log_in(store, user)
    assert await store.session_profile(user.id, session_id) == user  # cached as active
    redis_link.cut()
    started = time.monotonic()
    assert await cut_off_store.revoke_session(user.id, session_id)
    assert time.monotonic() - started >= 3 * HEARTBEAT_INTERVAL  # the degraded path waited
    assert await store.session_profile(user.id, session_id) is None

    async def repaired() -> bool:
        tombstone = await redis.get(session_key(session_id)) == TOMBSTONE
        return tombstone and not await tombstone_pending(primary, session_id)

    await eventually(repaired, "the replica that reaches Redis writes the tombstone")
    assert await store.session_profile(user.id, session_id) is None
    redis_link.restore()
    assert await cut_off_store.session_profile(user.id, session_id) is None
    assert await store.session_profile(user.id, session_id) is None


async def test_sessions_are_read_from_the_primary_while_the_pending_tombstones_are_unknown(
    primary: Database, replica: Database, cache: RedisCache, freshness: ReplicaFreshness
) -> None:
    unreachable = await Database.open(
        f"mysql://app:pw@{HOST}:{free_port()}/gatehouse", role="primary", pool_size=1, timeout=0.5
    )
    pending = PendingTombstones(unreachable, cache, HEARTBEAT_INTERVAL)
    heartbeat = HeartbeatWriter(primary, HEARTBEAT_INTERVAL)
    store = AccountStore(primary, [replica], cache, heartbeat, freshness, pending)
    await store.start()
    try:
        user = await register(store)
        session_id = await log_in(store, user)  # cached as active, with the profile
        for _ in range(2):
            primary_reads = reads("primary")
            assert await store.session_profile(user.id, session_id) == user
            assert reads("primary") == primary_reads + 1
    finally:
        await store.close()
        await unreachable.close()


async def test_everything_works_from_mysql_while_redis_is_down(
    store: AccountStore,
    redis: Redis,
    data_stores: DataStores,
    eventually: Eventually,
    stop_redis: Callable[[], Awaitable[None]],
) -> None:
    await stop_redis()
    user = await register(store, nickname="Offline")
    with pytest.raises(UsernameTaken):
        await register(store, user.username.upper())
    assert await store.find_credentials(user.username) is not None
    session_id = await log_in(store, user)
    assert await store.session_profile(user.id, session_id) == user
    updated = await store.update_profile(user.id, session_id, nickname="Still offline")
    assert updated is not None and updated.nickname == "Still offline"
    assert await store.session_profile(user.id, session_id) == updated
    assert await store.revoke_session(user.id, session_id)
    assert await store.session_profile(user.id, session_id) is None

    await asyncio.to_thread(data_stores.redis.start)
    other_session = await log_in(store, user)

    async def cache_serves_again() -> bool:
        await store.session_profile(user.id, other_session)
        return await redis.exists(profile_key(user.id)) == 1

    await eventually(cache_serves_again, "the store fills the cache again once Redis is back")
    assert await store.session_profile(user.id, session_id) is None


async def test_open_starts_a_ready_store(
    data_stores: DataStores, primary_dsn: str, replica_dsn: str
) -> None:
    store = await AccountStore.open(
        settings(primary_dsn, data_stores.redis_url, mysql_replica_dsns=(replica_dsn,))
    )
    try:
        assert store.ready
        user = await register(store)
        assert await store.find_credentials(user.username) is not None
    finally:
        await store.close()


async def test_open_with_an_unreachable_primary_starts_unready(data_stores: DataStores) -> None:
    dsn = f"mysql://gatehouse:pw@127.0.0.1:{free_port()}/gatehouse"
    store = await AccountStore.open(settings(dsn, data_stores.redis_url, mysql_timeout=0.5))
    try:
        assert not store.ready
    finally:
        await store.close()


async def test_a_profile_change_cut_off_from_redis_is_read_back_on_every_replica(
    store: AccountStore, redis_link: TcpProxy, cut_off_store: AccountStore
) -> None:
    user = await register(store, nickname="Before")
    session_id = await log_in(store, user)
    cached = await store.session_profile(user.id, session_id)
    assert cached is not None and cached.nickname == "Before"  # cached in Redis by B
    redis_link.cut()
    renamed = await cut_off_store.update_profile(user.id, session_id, nickname="After")
    assert renamed is not None and renamed.nickname == "After"  # acknowledged to the user
    seen = await store.session_profile(user.id, session_id)
    assert seen is not None and seen.nickname == "After"
    credentials = await store.find_credentials(user.username)
    assert credentials is not None and credentials.user.nickname == "After"


async def test_a_replica_back_from_a_redis_outage_does_not_serve_a_write_it_missed(
    primary_dsn: str,
    replica_dsn: str,
    data_stores: DataStores,
    redis: Redis,
    redis_link: TcpProxy,
    cut_off_store: AccountStore,
    eventually: Eventually,
) -> None:
    """After a Redis outage (a freeze, a partition) the reader's breaker closes on a plain PING,
    while the writer of a profile change made meanwhile is still cut off and cannot raise
    gh:since: the reader must not trust the old profile Redis still holds."""
    reader_link = await TcpProxy.start(HOST, data_stores.redis.port)
    reader = await AccountStore.open(
        settings(
            primary_dsn, f"redis://{HOST}:{reader_link.port}/0", mysql_replica_dsns=(replica_dsn,)
        )
    )
    try:
        # On a loaded machine the start's script load can overrun its timeout and open the
        # breaker (as the `cache` fixture knows): the test begins with Redis answering.
        async def reader_reaches_redis() -> bool:
            return not reader.cache.breaker_open

        await eventually(reader_reaches_redis, "the reader's Redis breaker is closed")
        user = await register(reader, nickname="Before")
        session_id = await log_in(reader, user)
        cached = await reader.session_profile(user.id, session_id)
        assert cached is not None and cached.nickname == "Before"
        assert await redis.exists(profile_key(user.id)) == 1  # the old profile is in Redis
        reader_link.cut()
        redis_link.cut()
        assert await reader.session_profile(user.id, session_id) == cached  # opens its breaker
        assert reader.cache.breaker_open
        renamed = await cut_off_store.update_profile(user.id, session_id, nickname="After")
        assert renamed is not None and renamed.nickname == "After"
        reader_link.restore()

        async def breaker_closed() -> bool:
            await reader.session_profile(user.id, session_id)  # lets the probe start
            return not reader.cache.breaker_open

        await eventually(breaker_closed, "the reader's probe reaches Redis again")
        seen = await reader.session_profile(user.id, session_id)
        assert seen is not None and seen.nickname == "After"
    finally:
        await reader.close()
        await reader_link.close()


async def test_redis_back_from_an_older_snapshot_cannot_revive_a_revoked_session(
    store: AccountStore, redis: Redis, data_stores: DataStores
) -> None:
    """Redis restarting from a snapshot taken before the logout, as one restored from a backup
    or a replica promoted by a failover before the logout reached it: gh:since is there, the
    tombstone and the logout's gh:w are not."""
    user = await register(store)
    session_id = await log_in(store, user)
    assert await store.session_profile(user.id, session_id) == user  # cached as active
    snapshot = data_stores.redis.state_dir / "dump.rdb"
    try:
        await redis.save()
        assert await store.revoke_session(user.id, session_id)
        assert await redis.get(session_key(session_id)) == TOMBSTONE
        await asyncio.to_thread(data_stores.redis.restart)  # loads the snapshot
        await redis.connection_pool.disconnect()  # this client's connections died with it
        assert await redis.get(session_key(session_id)) not in (None, TOMBSTONE)
        assert await redis.get(SINCE_KEY) is not None
    finally:
        snapshot.unlink(missing_ok=True)  # later restarts come back empty, as they should
    assert await store.session_profile(user.id, session_id) is None
    assert await store.session_profile(user.id, session_id) is None
