"""AccountStore while the MySQL primary is out of reach, against the real primary, its replica
and Redis: reads go on, acknowledged logouts hold, writes fail at once, recovery is quick.

The outage is a cut TCP link between one store and the primary (tests/auth/tcp_proxy.py): for
that store it is a primary frozen mid-query (forwarded connections drop, new ones are never
answered), while the primary itself keeps running and replicating. So every test here is also
the partition case: another store may still write through the primary meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from unittest import mock

import bcrypt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from devstack import DataStores
from devstack.ports import HOST
from services.auth.accounts import AccountStore, UserRecord
from services.auth.settings import AuthSettings
from services.auth.store.cache import (
    BREAK_SECONDS,
    TOMBSTONE,
    RedisCache,
    profile_key,
    session_key,
)
from services.auth.store.database import Database, PrimaryDown
from services.auth.store.freshness import HeartbeatWriter, ReplicaFreshness
from services.auth.store.health import LOG_INTERVAL, PrimaryHealth
from services.auth.store.revocations import FlagNotReplicated, PendingTombstones
from tests.auth.tcp_proxy import TcpProxy

Eventually = Callable[[Callable[[], Awaitable[bool]], str], Awaitable[None]]

INTERVAL = 0.05  # heartbeat and polls; the revocation lease is 3 of them
LEASE = 3 * INTERVAL
PROBE_TIMEOUT = 0.3
# Reads keep going for this long into the outage: many leases of the revocation polls, and the
# 2 s MySQL timeout, so that anything still leaning on the primary has failed by then.
OUTAGE_READS_SECONDS = 2.5
# A refusal while the primary is down must come at once, not after the health probe's timeout
# (PROBE_TIMEOUT) or MySQL's (2 s). The bound, 0.1 s, is measured by `make drill` on a
# quiet machine; here one call on a loaded 2-core machine took 0.141 s (review F), so the bound
# is the largest that still fails a refusal that waited for the probe.
FAST = PROBE_TIMEOUT - 0.05
# The cache's Redis timeout where Redis is not at fault: at 0.2 s a loaded machine's slow turn
# passed for Redis failing (a refill timed out, the breaker opened, reads were refused).
HEALTHY_REDIS_TIMEOUT = 2.0

PASSWORD_HASH = bcrypt.hashpw(b"correct horse", bcrypt.gensalt(4))


def settings(primary_dsn: str, replica_dsn: str, redis_url: str) -> AuthSettings:
    return AuthSettings(
        mysql_primary_dsn=primary_dsn,
        mysql_replica_dsns=(replica_dsn,),
        redis_url=redis_url,
        peppers={1: b"unused-in-these-tests"},
        jwt_private_key=Ed25519PrivateKey.generate(),
        device_cookie_secret="unused-in-these-tests-but-32-characters-long",
        heartbeat_interval=INTERVAL,
        mysql_timeout=2.0,
        redis_timeout=0.2,
        primary_probe_timeout=PROBE_TIMEOUT,
        migrate_on_start=False,
    )


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def register(store: AccountStore, nickname: str = "Nick") -> UserRecord:
    return await store.create_user(
        secrets.randbits(62), f"user_{secrets.token_hex(5)}", nickname, PASSWORD_HASH, 1
    )


async def log_in(store: AccountStore, user: UserRecord) -> str:
    session_id = secrets.token_urlsafe(16)
    await store.create_session(
        user.id, session_id, datetime.now(UTC) + timedelta(hours=1), password_changes=0
    )
    return session_id


@pytest.fixture
async def primary_link(data_stores: DataStores) -> AsyncIterator[TcpProxy]:
    """The network between `store` and the primary, which a test can cut."""
    proxy = await TcpProxy.start(HOST, data_stores.primary.port)
    yield proxy
    await proxy.close()


@pytest.fixture
async def redis_link(data_stores: DataStores) -> AsyncIterator[TcpProxy]:
    """The network between `cut_off_store` and Redis, which a test can cut."""
    proxy = await TcpProxy.start(HOST, data_stores.redis.port)
    yield proxy
    await proxy.close()


class NeverRepairs(PendingTombstones):
    """The flag handling of a replica whose every repair finds Redis out of reach: it never
    writes the tombstones it sees flagged, so only the flags stand for them."""

    async def repair(self) -> None:
        return


@dataclass
class LinkedReplica:
    """An auth replica's store that reaches the primary only through `link`."""

    store: AccountStore
    freshness: ReplicaFreshness
    link: TcpProxy

    async def cut_primary(self, eventually: Eventually) -> None:
        self.link.cut()

        async def down() -> bool:
            return not self.store.ready

        await eventually(down, "the store's heartbeat finds the primary down")


@pytest.fixture
async def open_linked(
    data_stores: DataStores, primary_dsn: str, replica: Database, primary_link: TcpProxy
) -> AsyncIterator[Callable[..., Awaitable[LinkedReplica]]]:
    """Opens a LinkedReplica (`repairs=False`: with NeverRepairs; `redis_timeout`: its cache's,
    0.2 s unless given); closed after the test."""
    opened: list[AccountStore] = []
    linked_dsn = primary_dsn.replace(f":{data_stores.primary.port}/", f":{primary_link.port}/")

    async def open_store(*, repairs: bool = True, redis_timeout: float = 0.2) -> LinkedReplica:
        primary = await Database.open(
            linked_dsn, role="primary", pool_size=4, timeout=2.0, health=PrimaryHealth()
        )
        cache = RedisCache(
            data_stores.redis_url, timeout=redis_timeout, profile_ttl=3600, primary=primary
        )
        freshness = ReplicaFreshness(primary, [replica], INTERVAL)
        pending_type = PendingTombstones if repairs else NeverRepairs
        store = AccountStore(
            primary,
            [],  # `replica` is the fixture's: closed by it, not by the store
            cache,
            HeartbeatWriter(primary, INTERVAL, probe_timeout=PROBE_TIMEOUT),
            freshness,
            pending_type(primary, cache, INTERVAL, freshness=freshness),
        )
        await store.start()
        opened.append(store)
        return LinkedReplica(store, freshness, primary_link)

    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture
async def cut_off_store(
    primary_dsn: str, replica_dsn: str, redis_link: TcpProxy
) -> AsyncIterator[AccountStore]:
    """Another auth replica, reaching the primary directly and Redis only through `redis_link`.
    Its primary never goes away: a heartbeat slowed past PROBE_TIMEOUT by a busy machine must not
    make it refuse the writes the tests need of it (a suite run lost one test that way)."""
    reaches_the_primary = dataclasses.replace(
        settings(primary_dsn, replica_dsn, f"redis://{HOST}:{redis_link.port}/0"),
        primary_probe_timeout=10 * PROBE_TIMEOUT,
    )
    account_store = await AccountStore.open(reaches_the_primary)
    yield account_store
    await account_store.close()


async def wait_replica_covers_everything(
    primary: Database, replica: Database, eventually: Eventually
) -> None:
    """Until the replica has applied a heartbeat written after everything so far."""
    written = await primary.server_time()

    async def covered() -> bool:
        row = await replica.fetch_one(
            "test_beat", "SELECT beat FROM replication_heartbeat WHERE id = 1"
        )
        return row is not None and row["beat"] >= written

    await eventually(covered, "the replica's applied heartbeat passes the last write")


async def keep_reading(
    store: AccountStore, user: UserRecord, expected: dict[str, bool], seconds: float
) -> int:
    """Read each of the user's sessions again and again for `seconds`; each must answer the
    user (True: live) or None (False: refused). The number of reads answered.

    A read whose `PendingTombstones.refresh` answered False (no poll succeeded within the
    lease, 3 x INTERVAL: on a loaded machine the replica poll it then waits for can take
    longer) cannot rely on Redis and, with the primary down, is refused (PrimaryDown), as it
    must be. Such refusals are counted apart and must stay rare (one read in ten at most); any
    other refusal fails the test."""
    answers: list[bool] = []
    refresh = PendingTombstones.refresh

    async def recorded(pending: PendingTombstones) -> bool:
        answer = await refresh(pending)
        answers.append(answer)
        return answer

    count = refused = 0
    deadline = time.monotonic() + seconds
    with mock.patch.object(PendingTombstones, "refresh", recorded):
        while time.monotonic() < deadline:
            for session_id, live in expected.items():
                answers.clear()
                try:
                    answer = await store.session_profile(user.id, session_id)
                except PrimaryDown:
                    if answers != [False]:
                        raise
                    refused += 1
                    continue
                assert answer == (user if live else None), f"read {count} of {session_id}: {answer}"
                count += 1
            await asyncio.sleep(INTERVAL / 5)  # pacing only: a read every few ms, not a busy loop
    assert refused <= count // 10, f"{refused} reads refused after a late poll, {count} answered"
    return count


async def test_session_reads_go_on_from_redis_and_the_replica_through_a_primary_outage(
    open_linked: Callable[..., Awaitable[LinkedReplica]],
    primary: Database,
    replica: Database,
    redis: Redis,
    eventually: Eventually,
) -> None:
    # Redis stays healthy: a command it is slow to answer is this process starved of CPU (a
    # loaded machine), which with the primary down would leave nothing to vouch for a session.
    linked = await open_linked(redis_timeout=HEALTHY_REDIS_TIMEOUT)
    store = linked.store
    cached_user = await register(store)
    cached_session = await log_in(store, cached_user)
    assert await store.session_profile(cached_user.id, cached_session) == cached_user
    uncached_user = await register(store)
    uncached_session = await log_in(store, uncached_user)
    await redis.delete(profile_key(uncached_user.id), session_key(uncached_session))
    await wait_replica_covers_everything(primary, replica, eventually)

    degraded_before = metric("gatehouse_auth_degraded_reads_total")
    await linked.cut_primary(eventually)
    assert metric("gatehouse_auth_primary_available") == 0
    reads = await keep_reading(store, cached_user, {cached_session: True}, OUTAGE_READS_SECONDS)
    reads += await keep_reading(store, uncached_user, {uncached_session: True}, 0.5)
    assert metric("gatehouse_auth_degraded_reads_total") - degraded_before == reads


async def test_logouts_answered_before_or_during_the_outage_stay_in_force(
    open_linked: Callable[..., Awaitable[LinkedReplica]],
    cut_off_store: AccountStore,
    primary: Database,
    replica: Database,
    redis_link: TcpProxy,
    redis: Redis,
    eventually: Eventually,
) -> None:
    """`linked` loses the primary; `cut_off_store` keeps it but loses Redis, so its logouts
    leave the sessions "active" in Redis, flagged on the primary only. `linked` never repairs
    them, so only the flags stand between it and Redis's stale entries."""
    linked = await open_linked(repairs=False)
    store = linked.store
    user = await register(store)
    live, lost_tombstone, flagged_before, flagged_during = [
        await log_in(store, user) for _ in range(4)
    ]
    for session_id in (live, lost_tombstone, flagged_before, flagged_during):
        assert await store.session_profile(user.id, session_id) == user  # cached as active

    assert await store.revoke_session(user.id, lost_tombstone)
    assert await redis.delete(session_key(lost_tombstone)) == 1  # the tombstone is lost
    redis_link.cut()
    assert await cut_off_store.revoke_session(user.id, flagged_before)
    await wait_replica_covers_everything(primary, replica, eventually)

    await linked.cut_primary(eventually)
    # A logout answered while `linked` cannot see the primary: a partition, not an outage.
    started = time.monotonic()
    assert await cut_off_store.revoke_session(user.id, flagged_during)
    assert time.monotonic() - started >= LEASE  # the degraded path: flag, confirm, lease
    for session_id in (flagged_before, flagged_during):
        stale = await redis.get(session_key(session_id))
        assert stale not in (None, TOMBSTONE), "Redis still says active"

    await keep_reading(
        store,
        user,
        {live: True, lost_tombstone: False, flagged_before: False, flagged_during: False},
        OUTAGE_READS_SECONDS,
    )


async def test_a_lost_tombstone_with_a_lagging_replica_is_refused_not_revived(
    open_linked: Callable[..., Awaitable[LinkedReplica]],
    primary: Database,
    replica: Database,
    redis: Redis,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    linked = await open_linked()
    store = linked.store
    user = await register(store)
    session_id = await log_in(store, user)
    assert await store.session_profile(user.id, session_id) == user
    await wait_replica_covers_everything(primary, replica, eventually)
    await stop_sql_thread()  # the replica will show the session live after the logout
    assert await store.revoke_session(user.id, session_id)
    assert await redis.delete(session_key(session_id)) == 1

    await linked.cut_primary(eventually)
    for _ in range(3):
        with pytest.raises(PrimaryDown):  # refused (503), never answered as live
            await store.session_profile(user.id, session_id)


async def test_only_a_user_whose_last_write_the_replica_lacks_is_refused(
    open_linked: Callable[..., Awaitable[LinkedReplica]],
    primary: Database,
    replica: Database,
    redis: Redis,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    linked = await open_linked()
    store = linked.store
    writer, bystander = await register(store, "Old"), await register(store)
    writer_session, bystander_session = await log_in(store, writer), await log_in(store, bystander)
    await redis.delete(profile_key(bystander.id))  # its read needs the replica
    await wait_replica_covers_everything(primary, replica, eventually)
    await stop_sql_thread()
    updated = await store.update_profile(writer.id, writer_session, nickname="New")
    assert updated is not None
    await redis.delete(profile_key(writer.id))  # only MySQL can answer; the replica lacks it

    await linked.cut_primary(eventually)
    started = time.monotonic()
    with pytest.raises(PrimaryDown):
        await store.session_profile(writer.id, writer_session)
    assert time.monotonic() - started < FAST
    await keep_reading(store, bystander, {bystander_session: True}, 1.0)


async def test_writes_fail_at_once_while_the_primary_is_down_and_resume_when_it_is_back(
    open_linked: Callable[..., Awaitable[LinkedReplica]], eventually: Eventually
) -> None:
    linked = await open_linked()
    store = linked.store
    user = await register(store)
    session_id = await log_in(store, user)
    refused_before = metric("gatehouse_auth_primary_refusals_total", {"operation": "login"})
    await linked.cut_primary(eventually)

    writes: list[Callable[[], Awaitable[object]]] = [
        lambda: register(store),
        lambda: log_in(store, user),
        lambda: store.update_profile(user.id, session_id, nickname="Down"),
        lambda: store.revoke_session(user.id, session_id),
    ]
    for write in writes:
        started = time.monotonic()
        with pytest.raises(PrimaryDown):
            await write()
        assert time.monotonic() - started < FAST
    with pytest.raises(PrimaryDown):
        store.require_primary("login")
    assert (
        metric("gatehouse_auth_primary_refusals_total", {"operation": "login"})
        == refused_before + 1
    )

    linked.link.restore()
    restored = time.monotonic()

    async def writes_again() -> bool:
        try:
            return await store.update_profile(user.id, session_id, nickname="Up") is not None
        except PrimaryDown:
            return False

    await eventually(writes_again, "a write succeeds once the primary is back")
    assert time.monotonic() - restored < 1.0
    assert store.ready


async def test_the_heartbeat_alone_opens_and_closes_the_breaker(
    primary_dsn: str, data_stores: DataStores, primary_link: TcpProxy
) -> None:
    health = PrimaryHealth()
    linked_dsn = primary_dsn.replace(f":{data_stores.primary.port}/", f":{primary_link.port}/")
    primary = await Database.open(
        linked_dsn, role="primary", pool_size=2, timeout=2.0, health=health
    )
    heartbeat = HeartbeatWriter(primary, INTERVAL, probe_timeout=PROBE_TIMEOUT)
    try:
        primary_link.cut()  # before any connection: the probe's connect hangs, unanswered
        started = time.monotonic()
        await heartbeat.beat()
        took = time.monotonic() - started
        assert not health.available
        assert PROBE_TIMEOUT <= took < 1.0  # its own deadline, not the 2 s MySQL timeout
        with pytest.raises(PrimaryDown):
            await primary.fetch_one("test_read", "SELECT 1")
        primary_link.restore()
        await heartbeat.beat()
        assert health.available
        assert await primary.fetch_one("test_read", "SELECT 1 AS one") == {"one": 1}
    finally:
        await primary.close()


async def test_a_degraded_logout_waits_for_the_replica_to_hold_its_flag(
    primary: Database,
    replica: Database,
    cache: RedisCache,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    """A replica that cannot apply the flag in time makes the logout fail (the client retries
    it) rather than answer while readers relying on that replica could miss it."""
    freshness = ReplicaFreshness(primary, [replica], INTERVAL)
    freshness.start()
    heartbeat = HeartbeatWriter(primary, INTERVAL)
    heartbeat.start()
    pending = PendingTombstones(primary, cache, INTERVAL, freshness=freshness, confirm_timeout=0.5)
    try:
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
        started = time.monotonic()
        await pending.flag(session_id)  # the replica keeps up: flag, confirm, lease
        assert time.monotonic() - started >= LEASE
        await stop_sql_thread()
        with pytest.raises(FlagNotReplicated):
            await pending.flag(session_id)
    finally:
        await heartbeat.close()
        await freshness.close()


def test_the_first_line_of_an_outage_gives_no_duration(caplog: pytest.LogCaptureFixture) -> None:
    """The line that begins an outage read "down for 0.0 s": the clock moved on between the
    failure and the line (operators and the system tests look for "is down (")."""
    ticks = iter(range(1000, 2000))
    health = PrimaryHealth(clock=lambda: float(next(ticks)) / 1000)
    with caplog.at_level(logging.WARNING, logger="services.auth.store.health"):
        health.probe_failed("heartbeat failed: connection refused")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("the MySQL primary is down (heartbeat failed"), line


def test_a_flapping_primary_logs_one_outage_per_interval_and_a_long_one_still_gets_its_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    health = PrimaryHealth(clock=lambda: now[0])

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.INFO, logger="services.auth.store.health"):
        for _ in range(20):  # a heartbeat that overruns every other beat, for 10 s
            health.probe_failed("a heartbeat took over 1 s")
            assert not health.available
            now[0] += 0.25
            health.probe_succeeded()
            assert health.available
            now[0] += 0.25
        assert len(warnings()) == 1
        assert len([r for r in caplog.records if "answers again" in r.getMessage()]) == 1

        health.probe_failed("heartbeat failed: connection refused")  # a long outage begins
        assert len(warnings()) == 2 and "19 more short outages" in warnings()[-1]
        now[0] += 0.25
        health.probe_succeeded()
        health.probe_failed("heartbeat failed: connection refused")
        assert len(warnings()) == 2  # held back, 0.25 s after the last line...
        while now[0] < 1000.0 + 2 * LOG_INTERVAL:
            now[0] += 0.25
            health.probe_failed("heartbeat failed: connection refused")
        assert len(warnings()) == 3  # ...but logged once it outlasts the interval
        assert "the MySQL primary is down for" in warnings()[-1]


async def test_redis_restarting_empty_during_the_outage_revives_no_logged_out_session(
    open_linked: Callable[..., Awaitable[LinkedReplica]],
    primary: Database,
    replica: Database,
    data_stores: DataStores,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
    stop_redis: Callable[[], Awaitable[None]],
) -> None:
    """Tombstones, gh:w and gh:since are gone with Redis, the primary is out of reach and the
    replica never applied the logout: only a refusal (503) is right, never the session."""
    linked = await open_linked()
    store = linked.store
    user = await register(store)
    session_id = await log_in(store, user)
    assert await store.session_profile(user.id, session_id) == user
    await wait_replica_covers_everything(primary, replica, eventually)
    await stop_sql_thread()  # the replica will show the session live after the logout
    assert await store.revoke_session(user.id, session_id)

    await linked.cut_primary(eventually)
    assert await store.session_profile(user.id, session_id) is None  # the tombstone
    await stop_redis()
    await asyncio.to_thread(data_stores.redis.start)  # same port, no keys

    refusals = 0
    deadline = time.monotonic() + 3 * BREAK_SECONDS  # past the cache's breaker, Redis answers
    while time.monotonic() < deadline:
        try:
            answer = await store.session_profile(user.id, session_id)
        except PrimaryDown:
            refusals += 1
        else:
            assert answer is None, "a logged-out session came back"
        await asyncio.sleep(INTERVAL)  # pacing only
    assert refusals > 0
