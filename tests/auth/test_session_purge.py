"""Purging expired sessions on the real MariaDB: what is deleted and kept, one purger at a time
(the MySQL named lock, also when its connection dies), the rate, and the auth replica's loop."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from devstack import DataStores
from devstack.ports import wait_until_async
from services.auth.replica import run as run_replica
from services.auth.store.database import Database
from services.auth.store.health import PrimaryHealth
from services.auth.store.session_purge import LOCK_NAME, PurgeLimits, SessionPurge
from tests.auth.conftest import MYSQL_TIMEOUT
from tests.auth.test_app import replica_settings

PURGE_AFTER = timedelta(minutes=5)
LIMITS = PurgeLimits(purge_after=PURGE_AFTER, batch_size=10, rows_per_second=10_000)


class FakeTime:
    """The purge's clock and pause: time passes only when it pauses, so the rate limit shows
    in the pauses it asks for, not in how fast the database is. `during_pause` runs in each."""

    def __init__(self, during_pause: Callable[[], Awaitable[None]] | None = None) -> None:
        self.now = 0.0
        self.pauses: list[float] = []
        self._during_pause = during_pause

    def clock(self) -> float:
        return self.now

    async def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds
        if self._during_pause is not None:
            await self._during_pause()


@pytest.fixture
async def user_id(primary: Database) -> int:
    new_id = secrets.randbits(62)
    await primary.execute(
        "test_user",
        "INSERT INTO users (id, username, nickname, password_hash, pepper_version, version,"
        " created_at, updated_at) VALUES (%s, %s, 'n', 'h', 1, 1, NOW(6), NOW(6))",
        (new_id, f"purge{new_id % 10**12}"),
    )
    return new_id


@pytest.fixture
async def empty_sessions(primary: Database) -> AsyncIterator[None]:
    """The module's sessions table starts empty for each test (they count its rows)."""
    await primary.execute("test_cleanup", "DELETE FROM sessions")
    yield


async def add_session(
    primary: Database, user_id: int, expires_at: datetime, *, revoked: bool = False
) -> str:
    session_id = secrets.token_urlsafe(16)
    await primary.execute(
        "test_session",
        "INSERT INTO sessions (id, user_id, created_at, expires_at, revoked_at)"
        " VALUES (%s, %s, NOW(6), %s, %s)",
        (session_id, user_id, expires_at, datetime.now(UTC) if revoked else None),
    )
    return session_id


async def add_expired(primary: Database, user_id: int, count: int) -> None:
    long_ago = datetime.now(UTC) - PURGE_AFTER - timedelta(hours=1)
    for offset in range(count):
        await add_session(primary, user_id, long_ago + timedelta(seconds=offset))


@pytest.fixture
async def gated(primary_dsn: str) -> AsyncIterator[Database]:
    """A primary pool behind its own health breaker (`gated.health`), as a replica opens it."""
    database = await Database.open(
        primary_dsn, role="primary", pool_size=2, timeout=MYSQL_TIMEOUT, health=PrimaryHealth()
    )
    yield database
    await database.close()


def heartbeat_fails(database: Database) -> Callable[[], Awaitable[None]]:
    async def fail() -> None:
        assert database.health is not None
        database.health.probe_failed("test: the heartbeat failed")

    return fail


def kill_the_lock_holder(data_stores: DataStores) -> Callable[[], Awaitable[None]]:
    async def kill() -> None:
        rows = data_stores.primary.execute("SELECT IS_USED_LOCK(%s) AS holder", (LOCK_NAME,))
        data_stores.primary.execute(f"KILL {int(rows[0]['holder'])}")

    return kill


def lock_freed(data_stores: DataStores) -> Callable[[], Awaitable[bool]]:
    async def free() -> bool:
        rows = await asyncio.to_thread(
            data_stores.primary.execute, "SELECT IS_FREE_LOCK(%s) AS free", (LOCK_NAME,)
        )
        return bool(rows[0]["free"] == 1)

    return free


async def session_ids(primary: Database) -> set[str]:
    rows = await primary.fetch_all("test_sessions", "SELECT id FROM sessions")
    return {row["id"] for row in rows}


@pytest.mark.usefixtures("empty_sessions")
async def test_only_rows_expired_longer_than_the_margin_are_purged(
    primary: Database, user_id: int
) -> None:
    now = datetime.now(UTC)
    expired_long_ago = now - PURGE_AFTER - timedelta(minutes=1)
    expired = {
        await add_session(primary, user_id, expired_long_ago),
        await add_session(primary, user_id, expired_long_ago, revoked=True),
        await add_session(primary, user_id, now - timedelta(days=30)),
    }
    kept = {
        await add_session(primary, user_id, now + timedelta(hours=1)),  # live
        await add_session(primary, user_id, now + timedelta(hours=1), revoked=True),
        # expired, but within the margin that covers clock differences
        await add_session(primary, user_id, now - PURGE_AFTER + timedelta(minutes=1)),
    }
    run = await SessionPurge(primary, LIMITS).run()
    assert (run.outcome, run.rows) == ("done", len(expired))
    assert await session_ids(primary) == kept


@pytest.mark.usefixtures("empty_sessions")
async def test_the_rate_spaces_the_batches(primary: Database, user_id: int) -> None:
    await add_expired(primary, user_id, 25)
    fake_time = FakeTime()
    limits = PurgeLimits(purge_after=PURGE_AFTER, batch_size=10, rows_per_second=5)
    purge = SessionPurge(primary, limits, clock=fake_time.clock, pause=fake_time.pause)
    run = await purge.run()
    assert (run.outcome, run.rows, run.batches) == ("done", 25, 3)
    # Two full batches of 10 rows at 5 rows/s: 2 s each before the next batch may start.
    assert fake_time.pauses == [2.0, 2.0]
    assert await session_ids(primary) == set()


@pytest.mark.usefixtures("empty_sessions")
async def test_a_second_purger_skips_its_turn_while_one_purges(
    primary_dsn: str, primary: Database, user_id: int
) -> None:
    await add_expired(primary, user_id, 25)
    other_replica = await Database.open(
        primary_dsn, role="primary", pool_size=2, timeout=MYSQL_TIMEOUT
    )
    outcomes: list[tuple[str, int]] = []

    async def run_the_other_purger() -> None:
        # The first purger pauses between batches, holding the lock: the other runs now.
        other = await SessionPurge(other_replica, LIMITS).run()
        outcomes.append((other.outcome, other.rows))

    fake_time = FakeTime(during_pause=run_the_other_purger)
    try:
        first = await SessionPurge(
            primary, LIMITS, clock=fake_time.clock, pause=fake_time.pause
        ).run()
    finally:
        await other_replica.close()
    assert (first.outcome, first.rows) == ("done", 25)
    assert outcomes == [("lock_held_elsewhere", 0), ("lock_held_elsewhere", 0)]
    # Released at the end: the next run takes the lock.
    assert (await SessionPurge(primary, LIMITS).run()).outcome == "done"


@pytest.mark.usefixtures("empty_sessions")
async def test_a_dead_lock_connection_stops_the_run_and_frees_the_lock(
    data_stores: DataStores, primary: Database, user_id: int
) -> None:
    await add_expired(primary, user_id, 25)

    fake_time = FakeTime(during_pause=kill_the_lock_holder(data_stores))
    first = await SessionPurge(primary, LIMITS, clock=fake_time.clock, pause=fake_time.pause).run()
    assert (first.outcome, first.rows) == ("failed", 10)  # stopped after its first batch
    # KILL only marks the connection: its thread frees the lock when it next looks, which may
    # come a moment after the run has seen its connection fail.
    await wait_until_async(lock_freed(data_stores), 5.0, "the killed connection's lock freed")
    second = await SessionPurge(primary, LIMITS).run()
    assert (second.outcome, second.rows) == ("done", 15)
    assert await session_ids(primary) == set()


@pytest.mark.usefixtures("empty_sessions")
async def test_a_run_stops_once_the_primary_counts_as_down(
    data_stores: DataStores, gated: Database, primary: Database, user_id: int
) -> None:
    await add_expired(primary, user_id, 25)
    assert gated.health is not None
    fake_time = FakeTime(during_pause=heartbeat_fails(gated))
    down = await SessionPurge(gated, LIMITS, clock=fake_time.clock, pause=fake_time.pause).run()
    still_down = await SessionPurge(gated, LIMITS).run()
    gated.health.probe_succeeded()
    await wait_until_async(lock_freed(data_stores), 5.0, "the stopped run's lock to be freed")
    up = await SessionPurge(gated, LIMITS).run()
    assert (down.outcome, down.rows) == ("failed", 10)  # stopped after its first batch
    assert (still_down.outcome, still_down.rows) == ("failed", 0)
    assert (up.outcome, up.rows) == ("done", 15)


@pytest.mark.usefixtures("empty_sessions")
async def test_a_run_stopped_by_the_outage_leaves_the_telling_to_the_health_line(
    data_stores: DataStores,
    gated: Database,
    primary: Database,
    user_id: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await add_expired(primary, user_id, 25)
    assert gated.health is not None

    def purge_warnings() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.name == "services.auth.store.session_purge"
            and record.levelno >= logging.WARNING
        ]

    with caplog.at_level(logging.DEBUG, logger="services.auth.store.session_purge"):
        during_outage = FakeTime(during_pause=heartbeat_fails(gated))
        purge = SessionPurge(gated, LIMITS, clock=during_outage.clock, pause=during_outage.pause)
        stopped = await purge.run()
        assert (stopped.outcome, stopped.rows) == ("failed", 10)
        purge.report(stopped)
        assert purge_warnings() == []
        gated.health.probe_succeeded()
        # The server frees the lock of the closed connection on its own time.
        await wait_until_async(lock_freed(data_stores), 5.0, "the stopped run's lock to be freed")
        killed = FakeTime(during_pause=kill_the_lock_holder(data_stores))
        purge = SessionPurge(gated, LIMITS, clock=killed.clock, pause=killed.pause)
        failed = await purge.run()
        assert (failed.outcome, failed.rows) == ("failed", 10)
        purge.report(failed)
    assert len(purge_warnings()) == 1, purge_warnings()  # a failure of its own is told


@pytest.mark.usefixtures("empty_sessions")
async def test_a_running_auth_replica_purges_expired_sessions(
    data_stores: DataStores, primary_dsn: str, primary: Database, user_id: int
) -> None:
    await add_expired(primary, user_id, 3)
    live = await add_session(primary, user_id, datetime.now(UTC) + timedelta(hours=1))
    settings = replica_settings(
        data_stores,
        primary_dsn,
        session_purge_interval=1.0,
        session_purge_after=int(PURGE_AFTER.total_seconds()),
        migrate_on_start=False,
    )
    replica = asyncio.create_task(run_replica(settings))

    async def purged() -> bool:
        return await session_ids(primary) == {live}

    try:
        await wait_until_async(
            purged,
            20.0,
            "the replica to purge the expired sessions",
            abort=lambda: f"the replica ended: {replica!r}" if replica.done() else None,
        )
    finally:
        if not replica.done():
            os.kill(os.getpid(), signal.SIGTERM)  # the replica's handler takes it
        assert await asyncio.wait_for(replica, 30.0) == 0
