"""cache.py against the real Redis, with the primary's clock."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from devstack import DataStores
from devstack.ports import wait_until_async
from services.auth.store import cache as cache_module
from services.auth.store import local_cache as local_cache_module
from services.auth.store.cache import (
    BREAK_SECONDS,
    REDIS_POOL_CONNECTIONS,
    SINCE_KEY,
    WINDOW,
    ActiveSession,
    CachedProfile,
    LastWrite,
    RedisCache,
    SessionTombstone,
    profile_key,
    session_key,
    write_key,
)
from services.auth.store.database import Database
from tests.auth.conftest import new_cache, redis_errors

HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
PROFILE = {"nickname": "Zoë 🦊"}


def micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def new_user_id() -> int:
    return secrets.randbits(62)


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


async def stored_int(redis: Redis, key: str) -> int:
    value = await redis.get(key)
    assert value is not None, f"{key} is not in Redis"
    return int(value)


async def test_start_raises_since_to_the_primary_clock(
    data_stores: DataStores, primary: Database, redis: Redis
) -> None:
    before = await primary.server_time()
    cache = RedisCache(data_stores.redis_url, timeout=0.2, profile_ttl=60, primary=primary)
    await cache.start()
    try:
        assert await stored_int(redis, SINCE_KEY) >= micros(before)
    finally:
        await cache.close()


async def test_a_missing_since_means_redis_lost_its_state(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    await redis.delete(SINCE_KEY)
    before = await primary.server_time()
    assert (
        await cache.session_view(new_user_id(), new_session_id()) is None
    )  # not trusted: read MySQL
    view = await cache.session_view(new_user_id(), new_session_id())  # gh:since raised first
    assert view is not None and view.required >= before
    assert await stored_int(redis, SINCE_KEY) >= micros(before)


async def test_a_recorded_write_sets_what_reads_require(
    cache: RedisCache, primary: Database
) -> None:
    user_id = new_user_id()
    written = await primary.server_time()
    await cache.record_write(
        [LastWrite(user_id, written), CachedProfile(user_id, 3, written, PROFILE)]
    )
    view = await cache.session_view(user_id, new_session_id())
    assert view is not None
    assert view.required == written
    assert view.profile == CachedProfile(user_id, 3, written, PROFILE)
    assert view.session is None and not view.session_revoked


async def test_a_profile_older_than_the_last_write_is_not_served(
    cache: RedisCache, primary: Database
) -> None:
    user_id = new_user_id()
    first = await primary.server_time()
    await cache.record_write([LastWrite(user_id, first), CachedProfile(user_id, 1, first, PROFILE)])
    second = await primary.server_time()
    await cache.record_write([LastWrite(user_id, second)])
    view = await cache.session_view(user_id, new_session_id())
    assert view is not None and view.required == second
    assert view.profile is None


async def test_session_entries_from_before_since_are_ignored(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    user_id, session_id = new_user_id(), new_session_id()
    since = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        microseconds=await stored_int(redis, SINCE_KEY)
    )
    expires_at = datetime.now(UTC) + HOUR
    await cache.refill([ActiveSession(session_id, user_id, expires_at, since - SECOND)])
    view = await cache.session_view(user_id, session_id)
    assert view is not None and view.session is None

    now = await primary.server_time()
    await cache.refill([ActiveSession(session_id, user_id, expires_at, now)])
    view = await cache.session_view(user_id, session_id)
    assert view is not None and view.session == ActiveSession(session_id, user_id, expires_at, now)


async def test_a_refill_never_overwrites_a_tombstone(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    user_id, session_id = new_user_id(), new_session_id()
    expires_at = datetime.now(UTC) + HOUR
    await cache.record_write([SessionTombstone(session_id, expires_at)])
    far_future = await primary.server_time() + HOUR
    await cache.refill([ActiveSession(session_id, user_id, expires_at, far_future)])
    assert await redis.get(session_key(session_id)) == b"R"
    assert 3500_000 < await redis.pttl(session_key(session_id)) <= 3600_000
    view = await cache.session_view(user_id, session_id)
    assert view is not None and view.session_revoked and view.session is None


async def test_a_session_refill_keeps_the_newer_entry(cache: RedisCache, primary: Database) -> None:
    user_id, session_id = new_user_id(), new_session_id()
    expires_at = datetime.now(UTC) + HOUR
    now = await primary.server_time()
    await cache.refill([ActiveSession(session_id, user_id, expires_at, now + SECOND)])
    await cache.refill([ActiveSession(session_id, user_id, expires_at, now)])
    view = await cache.session_view(user_id, session_id)
    assert view is not None and view.session is not None and view.session.as_of == now + SECOND
    await cache.refill([ActiveSession(session_id, user_id, expires_at, now + 2 * SECOND)])
    view = await cache.session_view(user_id, session_id)
    assert view is not None and view.session is not None and view.session.as_of == now + 2 * SECOND


async def test_a_profile_is_replaced_only_by_a_newer_version(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    user_id = new_user_id()
    now = await primary.server_time()

    async def cached() -> tuple[int, datetime]:
        view = await cache.session_view(user_id, new_session_id())
        assert view is not None and view.profile is not None
        return view.profile.version, view.profile.as_of

    await cache.refill([CachedProfile(user_id, 2, now, {"nickname": "two"})])
    await cache.refill([CachedProfile(user_id, 1, now + SECOND, {"nickname": "one"})])
    assert await cached() == (2, now)
    await cache.refill([CachedProfile(user_id, 2, now + SECOND, {"nickname": "two"})])
    assert await cached() == (2, now + SECOND)
    await cache.refill([CachedProfile(user_id, 3, now, {"nickname": "three"})])
    assert await cached() == (3, now)
    assert 3500_000 < await redis.pttl(profile_key(user_id)) <= 3600_000


async def test_the_last_write_only_rises_and_lasts_a_day(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    user_id = new_user_id()
    now = await primary.server_time()
    await cache.record_write([LastWrite(user_id, now + SECOND)])
    await cache.record_write([LastWrite(user_id, now)])
    assert await stored_int(redis, write_key(user_id)) == micros(now + SECOND)
    assert 86_000_000 < await redis.pttl(write_key(user_id)) <= 86_400_000


async def test_expired_sessions_are_not_stored(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    user_id, session_id = new_user_id(), new_session_id()
    expired = datetime.now(UTC) - SECOND
    # Nothing needs storing, so both report success.
    assert await cache.refill(
        [ActiveSession(session_id, user_id, expired, await primary.server_time())]
    )
    assert await cache.record_write([SessionTombstone(session_id, expired)])
    assert await redis.exists(session_key(session_id)) == 0


async def test_scripts_are_loaded_again_when_redis_forgot_them(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    user_id = new_user_id()
    await redis.script_flush()
    now = await primary.server_time()
    assert await cache.record_write([LastWrite(user_id, now)])
    assert await stored_int(redis, write_key(user_id)) == micros(now)


async def test_entries_not_written_by_this_service_are_ignored_then_replaced(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    user_id, session_id = new_user_id(), new_session_id()
    await redis.set(profile_key(user_id), "not json")
    await redis.set(session_key(session_id), "{}")
    await redis.set(write_key(user_id), "soon")
    view = await cache.session_view(user_id, session_id)
    assert view is not None
    assert (view.profile, view.session, view.session_revoked) == (None, None, False)

    now = await primary.server_time()
    await cache.refill(
        [
            CachedProfile(user_id, 1, now, PROFILE),
            ActiveSession(session_id, user_id, now + HOUR, now),
        ]
    )
    view = await cache.session_view(user_id, session_id)
    assert view is not None and view.profile is not None and view.session is not None


async def test_a_hung_redis_costs_one_timeout_per_second(
    cache: RedisCache, pause_redis: Callable[[], None]
) -> None:
    errors_before = redis_errors()
    pause_redis()
    started = time.monotonic()
    assert await cache.session_view(new_user_id(), new_session_id()) is None
    assert 0.15 < time.monotonic() - started < 0.6  # one timeout (0.2 s)
    started = time.monotonic()
    for _ in range(50):
        assert await cache.session_view(new_user_id(), new_session_id()) is None
        await cache.record_write([LastWrite(new_user_id(), datetime.now(UTC))])
    assert time.monotonic() - started < 0.2  # skipped, not waited for
    assert redis_errors() == errors_before + 1


async def test_a_cache_timeout_leaves_the_throttle_scripts_on_redis(
    cache: RedisCache, data_stores: DataStores, pause_redis: Callable[[], None]
) -> None:
    """A timeout may be this process starved of CPU: only the cache skips Redis for it, the
    throttle keeps its shared counters (a refused connection sends both away, see below)."""
    pause_redis()
    assert await cache.session_view(new_user_id(), new_session_id()) is None
    data_stores.redis.process.resume()
    assert cache.breaker_open
    key = f"gh:t:s:test-{secrets.token_hex(4)}"
    assert await cache.run_script("test_window", WINDOW, [key], (10, 60_000, "check")) == 0


async def test_a_stopped_redis_degrades_every_call(
    cache: RedisCache, stop_redis: Callable[[], Awaitable[None]]
) -> None:
    await stop_redis()
    user_id, session_id = new_user_id(), new_session_id()
    now = datetime.now(UTC)
    assert await cache.session_view(user_id, session_id) is None
    assert (
        await cache.run_script("test_window", WINDOW, ["gh:t:s:test"], (10, 60_000, "check"))
        is None
    )
    assert not await cache.refill([ActiveSession(session_id, user_id, now + HOUR, now)])
    assert not await cache.record_write(
        [LastWrite(user_id, now), SessionTombstone(session_id, now + HOUR)]
    )


async def test_the_first_script_call_after_the_cool_down_is_the_probe_and_reaches_redis(
    data_stores: DataStores, primary: Database, stop_redis: Callable[[], Awaitable[None]]
) -> None:
    """A throttle attempt after an outage is counted in Redis, shared by every replica, not in
    the one replica's memory while a probe goes out in the background."""
    now = [1000.0]
    cache = new_cache(data_stores, primary, clock=lambda: now[0])
    await cache.start()
    key = f"gh:t:s:test-{secrets.token_hex(4)}"
    try:
        await stop_redis()
        assert await cache.run_script("test_window", WINDOW, [key], (10, 60_000, "add")) is None
        await asyncio.to_thread(data_stores.redis.start)
        # Still cooling down: the fallback, at once.
        assert await cache.run_script("test_window", WINDOW, [key], (10, 60_000, "add")) is None
        now[0] += BREAK_SECONDS
        assert await cache.run_script("test_window", WINDOW, [key], (10, 60_000, "add")) == 0
        assert await cache.run_script("test_window", WINDOW, [key], (1, 60_000, "check")) > 0
    finally:
        await cache.close()


async def test_a_throttle_probe_whose_caller_gives_up_still_counts_for_its_cool_down(
    data_stores: DataStores, primary: Database, pause_redis: Callable[[], None]
) -> None:
    """The probe runs in its caller's task: a caller cancelled while it waits must not let the
    next caller try a frozen Redis at once (one attempt per cool-down)."""
    now = [1000.0]
    cache = new_cache(data_stores, primary, clock=lambda: now[0])
    await cache.start()
    key = f"gh:t:s:test-{secrets.token_hex(4)}"
    args = (10, 60_000, "check")
    try:
        pause_redis()
        assert await cache.run_script("test_window", WINDOW, [key], args) is None  # times out
        now[0] += BREAK_SECONDS
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(cache.run_script("test_window", WINDOW, [key], args), 0.1)
        errors = redis_errors()
        assert await cache.run_script("test_window", WINDOW, [key], args) is None
        assert redis_errors() == errors  # taken to memory at once, not a second probe
    finally:
        data_stores.redis.process.resume()
        await cache.close()


async def test_a_missed_write_raises_since_once_redis_answers_again(
    cache: RedisCache,
    primary: Database,
    redis: Redis,
    data_stores: DataStores,
    pause_redis: Callable[[], None],
    eventually: Callable[[Callable[[], Awaitable[bool]], str], Awaitable[None]],
) -> None:
    user_id = new_user_id()
    pause_redis()
    written = await primary.server_time()
    await cache.record_write([LastWrite(user_id, written)])  # times out: not recorded
    data_stores.redis.process.resume()
    assert await stored_int(redis, SINCE_KEY) < micros(written)

    async def cache_answers() -> bool:
        return await cache.session_view(user_id, new_session_id()) is not None

    await eventually(cache_answers, "the cache is used again once the breaker lets Redis through")
    assert await stored_int(redis, SINCE_KEY) >= micros(written)


async def test_required_for_a_user_covers_their_last_write_and_since(
    cache: RedisCache, primary: Database, redis: Redis
) -> None:
    user_id = new_user_id()
    written = await primary.server_time()
    await cache.record_write([LastWrite(user_id, written)])
    assert await cache.required_for(user_id) == written
    since = await cache.required_for(new_user_id())
    assert since is not None and since < written
    await redis.delete(SINCE_KEY)
    assert await cache.required_for(user_id) is None  # Redis lost its state: read the primary
    raised = await cache.required_for(new_user_id())
    assert raised is not None and raised >= written


class GatedClock:
    """The primary as a cache sees it, whose clock answers only while `open` is set: holds a
    caller in the middle of raising gh:since."""

    def __init__(self, primary: Database) -> None:
        self._primary = primary
        self.open = asyncio.Event()
        self.asked = asyncio.Event()

    async def server_time(self) -> datetime:
        self.asked.set()
        await self.open.wait()
        return await self._primary.server_time()


async def test_a_write_is_recorded_while_another_caller_raises_since(
    data_stores: DataStores, primary: Database, redis: Redis
) -> None:
    """A write not recorded counts as missed: it costs another raise of gh:since (the cache is
    bypassed meanwhile) and turns a logout into a degraded one. So a write arriving while gh:since
    is being raised must still go to Redis, or under steady writes each raise begets the next."""
    clock = GatedClock(primary)
    clock.open.set()
    cache = RedisCache(
        data_stores.redis_url,
        timeout=0.2,
        profile_ttl=60,
        primary=clock,  # type: ignore[arg-type]
    )
    await cache.start()
    clock.open.clear()
    try:
        await redis.delete(SINCE_KEY)
        assert await cache.session_view(new_user_id(), new_session_id()) is None  # state lost
        clock.asked.clear()
        raising = asyncio.create_task(cache.required_for(new_user_id()))
        await asyncio.wait_for(clock.asked.wait(), 5.0)  # a reader is raising gh:since
        user_id = new_user_id()
        written = await primary.server_time()
        assert await cache.record_write([LastWrite(user_id, written)])
        assert await stored_int(redis, write_key(user_id)) == micros(written)
        clock.open.set()
        assert await asyncio.wait_for(raising, 5.0) is not None
    finally:
        clock.open.set()
        await cache.close()


async def test_more_concurrent_commands_than_the_pool_holds_wait_instead_of_failing(
    data_stores: DataStores, primary: Database
) -> None:
    # Three times the pool: a wide burst must queue for connections, not count as Redis
    # failing (which opens the breaker and sends reads to MySQL). The deadline is generous so
    # that only running out of connections, not a slow machine, can fail a write.
    cache = RedisCache(data_stores.redis_url, timeout=30.0, profile_ttl=3600, primary=primary)
    await cache.start()
    try:
        written = await primary.server_time()
        errors_before = redis_errors()
        writes = [
            cache.record_write([LastWrite(new_user_id(), written)])
            for _ in range(3 * REDIS_POOL_CONNECTIONS)
        ]
        results = await asyncio.gather(*writes)
        assert all(results), "some writes were not recorded in Redis"
        assert redis_errors() == errors_before
    finally:
        await cache.close()


@pytest.mark.usefixtures("evicting_redis")
async def test_a_redis_that_may_evict_keys_is_not_used_and_says_so(
    data_stores: DataStores, primary: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Tombstones and write records have a TTL, so volatile-lru may evict them: the cache sends
    every read to MySQL rather than trust what is left (test_accounts.py shows the revival)."""
    cache = new_cache(data_stores, primary)
    await cache.start()
    try:
        assert await cache.session_view(new_user_id(), new_session_id()) is None
        assert await cache.required_for(new_user_id()) is None
        assert REGISTRY.get_sample_value("gatehouse_auth_redis_may_evict") == 1.0
        assert "maxmemory-policy volatile-lru" in caplog.text
    finally:
        await cache.close()


OUTAGE_PROBES = 5


async def test_a_long_outage_is_logged_once_not_once_per_probe(
    data_stores: DataStores,
    primary: Database,
    stop_redis: Callable[[], Awaitable[None]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each probe's failure, each skipped write and each reconnect of the local cache logged a
    line, held back only by the 10 s rate limit: 12 lines in a 30 s outage, about 1,000 an hour
    per replica. Without the rate limit (as here), every repeat would show."""
    monkeypatch.setattr(cache_module, "_WARNING_INTERVAL", 0.0)
    monkeypatch.setattr(local_cache_module, "_LOG_INTERVAL", 0.0)
    now = [1000.0]
    cache = new_cache(data_stores, primary, clock=lambda: now[0])
    await cache.start()
    caplog.set_level(logging.DEBUG, logger="services.auth.store")
    try:
        await stop_redis()
        user_id, key = new_user_id(), f"gh:t:s:test-{secrets.token_hex(4)}"
        assert await cache.session_view(user_id, new_session_id()) is None  # both breakers open
        for _ in range(OUTAGE_PROBES):
            assert not await cache.record_write([LastWrite(user_id, datetime.now(UTC))])
            now[0] += BREAK_SECONDS
            errors = redis_errors()
            assert await cache.session_view(user_id, new_session_id()) is None  # probe sent
            assert await cache.run_script("test_window", WINDOW, [key], (10, 60_000, "add")) is None

            async def probes_failed(before: float = errors) -> bool:
                return redis_errors() >= before + 2  # the cache's probe and the scripts'

            await wait_until_async(probes_failed, 10.0, "both breakers' probes fail")

        def retried() -> bool:
            failures = [r for r in caplog.records if "cannot be opened" in r.getMessage()]
            return len(failures) >= 2

        await wait_until_async(retried, 10.0, "the local cache retries its connection")
    finally:
        await cache.close()
    lines = Counter(
        record.getMessage() for record in caplog.records if record.levelno >= logging.INFO
    )
    assert max(lines.values()) == 1, lines
    assert sum(lines.values()) <= 8, lines


async def test_a_breaker_that_opens_and_closes_logs_each_outage_as_a_pair(
    data_stores: DataStores,
    primary: Database,
    pause_redis: Callable[[], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The open and closed lines were rate-limited each on its own: an outage logged open 10 s
    after the last one, whose end came within 10 s of the last "closed" line, left "breaker
    open" as the last word on a breaker that was closed. Now each logged outage gets its end
    logged, a flap within the interval logs neither, and a held-back outage that lasts past
    the interval is logged by its failing probe."""
    now = [1000.0]
    cache = new_cache(data_stores, primary, clock=lambda: now[0])
    await cache.start()
    key = f"gh:t:s:test-{secrets.token_hex(4)}"
    caplog.set_level(logging.INFO, logger="services.auth.store.cache")

    def breaker_lines() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.getMessage().startswith("Redis scripts breaker")
        ]

    async def script_at(moment: float, *, frozen: bool) -> None:
        """One throttle script at `moment` on the breakers' clock, Redis frozen or not."""
        now[0] = moment
        if frozen:
            pause_redis()
        else:
            data_stores.redis.process.resume()
        await cache.run_script("test_window", WINDOW, [key], (10, 60_000, "check"))

    async def lines_are(expected: list[str]) -> None:
        def logged() -> bool:
            return [line.split(":")[0] for line in breaker_lines()] == expected

        await wait_until_async(logged, 10.0, f"the breaker's lines to be {expected}")

    opened, closed = "Redis scripts breaker open", "Redis scripts breaker closed"
    try:
        await script_at(1000.0, frozen=True)
        await script_at(1009.0, frozen=False)
        await lines_are([opened, closed])
        await script_at(1010.5, frozen=True)  # the interval after the first outage's line
        await script_at(1012.0, frozen=False)  # within the interval after the first "closed"
        await lines_are([opened, closed, opened, closed])
        await script_at(1013.0, frozen=True)  # a flap: neither line
        await script_at(1014.0, frozen=False)
        await script_at(1015.0, frozen=True)  # held back too, at first...
        assert len(breaker_lines()) == 4
        await script_at(1021.0, frozen=True)  # ...but its failing probe outlasts the interval
        await lines_are([opened, closed, opened, closed, opened])
        assert breaker_lines()[-1].endswith("(1 more short outages since the last one logged)")
        await script_at(1022.0, frozen=False)
        await lines_are([opened, closed, opened, closed, opened, closed])
    finally:
        data_stores.redis.process.resume()
        await cache.close()


async def test_an_eviction_policy_set_while_connections_are_open_is_noticed(
    data_stores: DataStores, primary: Database, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy was read only when a connection opened, and a replica keeps its pooled
    connections open for days: a `CONFIG SET maxmemory-policy volatile-lru` (or a parameter
    group applied) after the start was never seen, so the cache went on being read while Redis
    evicted the logout records that keep an ended session ended; nor was `noeviction`, set as
    the runbook says, seen until a restart (every read on MySQL meanwhile)."""
    monkeypatch.setattr(cache_module, "EVICTION_CHECK_SECONDS", 0.05, raising=False)
    cache = new_cache(data_stores, primary)
    await cache.start()
    user_id = new_user_id()

    async def cache_read() -> bool:
        return await cache.session_view(user_id, new_session_id()) is not None

    try:
        assert await cache_read()
        await redis.config_set("maxmemory-policy", "volatile-lru")
        await redis.config_set("maxmemory", "1gb")

        async def not_read() -> bool:
            return not await cache_read()

        await wait_until_async(not_read, 5.0, "the cache to stop reading an evicting Redis")
        assert REGISTRY.get_sample_value("gatehouse_auth_redis_may_evict") == 1.0
        await redis.config_set("maxmemory-policy", "noeviction")
        await wait_until_async(cache_read, 5.0, "the cache to read Redis again")
        assert REGISTRY.get_sample_value("gatehouse_auth_redis_may_evict") == 0.0
    finally:
        await redis.config_set("maxmemory", "0")
        await redis.config_set("maxmemory-policy", "noeviction")
        await cache.close()
