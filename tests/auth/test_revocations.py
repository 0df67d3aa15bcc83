"""PendingTombstones against the real primary and Redis: flag, poll, lease and repair."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from devstack.ports import HOST, free_port
from services.auth.settings import AuthSettings
from services.auth.store import revocations
from services.auth.store.cache import TOMBSTONE, ActiveSession, RedisCache, session_key
from services.auth.store.database import Database, DatabaseError
from services.auth.store.freshness import HeartbeatWriter, ReplicaFreshness
from services.auth.store.health import PrimaryHealth
from services.auth.store.revocations import PendingTombstones
from services.http.settings import HttpSettings

Eventually = Callable[[Callable[[], Awaitable[bool]], str], Awaitable[None]]

INTERVAL = 0.05
HOUR = timedelta(hours=1)


async def revoked_session(primary: Database, lifetime: timedelta = HOUR) -> str:
    """A new user's revoked session, written straight to the primary."""
    user_id, session_id = secrets.randbits(62), secrets.token_urlsafe(16)
    await primary.execute(
        "test_user",
        "INSERT INTO users (id, username, nickname, password_hash, pepper_version, version,"
        " created_at, updated_at) VALUES (%s, %s, 'Nick', %s, 1, 1, NOW(6), NOW(6))",
        (user_id, f"user_{secrets.token_hex(5)}", b"x" * 60),
    )
    await primary.execute(
        "test_session",
        "INSERT INTO sessions (id, user_id, created_at, expires_at, revoked_at)"
        " VALUES (%s, %s, NOW(6), %s, NOW(6))",
        (session_id, user_id, datetime.now(UTC) + lifetime),
    )
    return session_id


async def flagged(primary: Database, session_id: str) -> bool:
    row = await primary.fetch_one(
        "test_flag", "SELECT tombstone_pending FROM sessions WHERE id = %s", (session_id,)
    )
    assert row is not None
    return row["tombstone_pending"] == 1


async def cache_says_active(cache: RedisCache, primary: Database, session_id: str) -> None:
    """What Redis holds when a logout's tombstone did not get through."""
    now = await primary.server_time()
    assert await cache.refill([ActiveSession(session_id, 1, now + HOUR, now)])


async def unreachable_primary(health: PrimaryHealth | None = None) -> Database:
    return await Database.open(
        f"mysql://app:pw@{HOST}:{free_port()}/gatehouse",
        role="primary",
        pool_size=1,
        timeout=0.5,
        health=health,
    )


async def test_a_flag_answers_after_one_lease_and_the_next_poll_finds_it(
    primary: Database, cache: RedisCache
) -> None:
    pending = PendingTombstones(primary, cache, INTERVAL)
    session_id = await revoked_session(primary)
    started = time.monotonic()
    await pending.flag(session_id)
    assert time.monotonic() - started >= pending.lease == pytest.approx(3 * INTERVAL)
    assert await flagged(primary, session_id)
    assert not pending.includes(session_id)  # known from the next poll on
    await pending.poll()
    assert pending.includes(session_id)
    assert pending.current


async def test_a_repair_writes_the_tombstone_then_clears_the_flag(
    primary: Database, cache: RedisCache, redis: Redis
) -> None:
    pending = PendingTombstones(primary, cache, INTERVAL)
    session_id = await revoked_session(primary)
    await cache_says_active(cache, primary, session_id)
    await pending.flag(session_id)
    await pending.poll()
    await pending.repair()
    assert await redis.get(session_key(session_id)) == TOMBSTONE
    assert 0 < await redis.pttl(session_key(session_id)) <= HOUR / timedelta(milliseconds=1)
    assert not await flagged(primary, session_id)
    await pending.poll()
    assert not pending.includes(session_id)  # the tombstone speaks for it now


async def test_an_expired_flagged_session_is_cleared_without_a_tombstone(
    primary: Database, cache: RedisCache, redis: Redis
) -> None:
    pending = PendingTombstones(primary, cache, INTERVAL)
    session_id = await revoked_session(primary, lifetime=-timedelta(seconds=1))
    await pending.flag(session_id)
    await pending.poll()
    await pending.repair()
    assert not await flagged(primary, session_id)
    assert await redis.exists(session_key(session_id)) == 0


async def test_the_flag_stays_while_redis_is_out_of_reach(primary: Database, redis: Redis) -> None:
    dead_redis = RedisCache(
        f"redis://{HOST}:{free_port()}/0", timeout=0.2, profile_ttl=60, primary=primary
    )
    pending = PendingTombstones(primary, dead_redis, INTERVAL)
    try:
        session_id = await revoked_session(primary)
        await pending.flag(session_id)
        await pending.poll()
        await pending.repair()
        assert await flagged(primary, session_id)
        assert pending.includes(session_id)
        assert await redis.exists(session_key(session_id)) == 0
    finally:
        await dead_redis.close()


async def test_a_poll_is_relied_on_for_one_lease_only(
    primary: Database, cache: RedisCache, eventually: Eventually
) -> None:
    pending = PendingTombstones(primary, cache, INTERVAL)
    assert not pending.current  # never polled
    await pending.poll()
    assert pending.current

    async def lapsed() -> bool:
        return not pending.current

    await eventually(lapsed, "the lease of the only poll runs out")


async def test_without_the_primary_polls_fail_quietly_and_flags_raise(
    cache: RedisCache,
) -> None:
    primary = await unreachable_primary()
    pending = PendingTombstones(primary, cache, INTERVAL)
    try:
        await pending.poll()
        assert not pending.current
        with pytest.raises(DatabaseError):
            await pending.flag(secrets.token_urlsafe(16))
    finally:
        await primary.close()


async def test_a_failure_the_outage_explained_leaves_the_next_one_to_be_logged(
    cache: RedisCache, caplog: pytest.LogCaptureFixture
) -> None:
    """The primary's down line tells an outage; a poll failing for another reason once the
    primary counts as up again still gets its own warning."""
    health = PrimaryHealth()
    primary = await unreachable_primary(health)
    pending = PendingTombstones(primary, cache, INTERVAL)

    def poll_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == revocations.__name__]

    try:
        with caplog.at_level(logging.INFO, logger=revocations.__name__):
            health.probe_failed("a heartbeat timed out")
            await pending.poll()
            await pending.poll()
            assert poll_lines() == []
            health.probe_succeeded()
            await pending.poll()  # refused by a server that is not there: no outage explains it
            await pending.poll()
        assert len(poll_lines()) == 1 and "cannot read the sessions" in poll_lines()[0]
    finally:
        await primary.close()


async def unreachable_replica() -> Database:
    return await Database.open(
        f"mysql://app:pw@{HOST}:{free_port()}/gatehouse", role="replica", pool_size=1, timeout=0.5
    )


async def test_a_failing_replica_poll_says_whether_the_primary_stands_in(
    primary: Database, cache: RedisCache, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica poll's warning tells what the primary's poll does, not what it might."""
    replica = await unreachable_replica()
    down = await unreachable_primary()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == revocations.__name__]

    try:
        for source in (primary, down):
            freshness = ReplicaFreshness(source, [replica], INTERVAL)
            pending = PendingTombstones(source, cache, INTERVAL, freshness=freshness)
            with caplog.at_level(logging.WARNING, logger=revocations.__name__):
                await pending.poll()
                await pending.poll_replicas()
        up_line, down_line = [line for line in lines() if "no read replica answers" in line]
        assert up_line.endswith("the primary's poll stands in")
        assert "sessions are read from MySQL" in down_line
    finally:
        await replica.close()
        await down.close()


async def test_the_background_loops_poll_and_repair(
    primary: Database, cache: RedisCache, redis: Redis, eventually: Eventually
) -> None:
    pending = PendingTombstones(primary, cache, INTERVAL)
    pending.start()
    try:
        session_id = await revoked_session(primary)
        await cache_says_active(cache, primary, session_id)
        await pending.flag(session_id)

        async def repaired() -> bool:
            tombstone = await redis.get(session_key(session_id)) == TOMBSTONE
            return tombstone and not await flagged(primary, session_id)

        async def polled_lately() -> bool:
            return pending.current

        await eventually(repaired, "a loop writes the tombstone and clears the flag")
        # A poll started within the lease, 3 x 0.05 s: on a loaded machine the loop's last one
        # may be older by now, and `current` is rightly False until its next.
        await eventually(polled_lately, "the poll loop keeps polling")
    finally:
        await pending.close()


def declared(settings_class: type, env: str) -> dataclasses.Field[Any]:
    (field,) = [f for f in dataclasses.fields(settings_class) if f.metadata.get("env") == env]
    return field


async def test_a_degraded_logout_at_the_longest_heartbeat_interval_is_confirmed_in_time(
    primary: Database, replica: Database, cache: RedisCache
) -> None:
    """A degraded logout waits for a beat past its flag, a poll of the replica that reads it
    and a lease of three intervals. At the longest GATEHOUSE_HEARTBEAT_INTERVAL the settings
    take it is still confirmed within GATEHOUSE_LOGOUT_CONFIRM_TIMEOUT's default and answered
    well within the HTTP tier's default call deadline (at 5 s every one failed at 3 s)."""
    longest = declared(AuthSettings, "GATEHOUSE_HEARTBEAT_INTERVAL").metadata["bounds"].at_most
    interval = float(longest)
    call_timeout = declared(HttpSettings, "GATEHOUSE_CALL_TIMEOUT").default
    assert isinstance(call_timeout, float)
    writer = HeartbeatWriter(primary, interval)
    freshness = ReplicaFreshness(primary, [replica], interval)
    writer.start()
    freshness.start()
    try:
        pending = PendingTombstones(primary, cache, interval, freshness=freshness)
        for _ in range(2):
            session_id = await revoked_session(primary)
            started = time.monotonic()
            await pending.flag(session_id)  # FlagNotReplicated past the confirm timeout
            # Five intervals and the statements, with room left for the rest of the call.
            assert time.monotonic() - started < 0.7 * call_timeout
    finally:
        await freshness.close()
        await writer.close()
