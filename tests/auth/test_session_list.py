"""A person's own sessions on a real store: what a login records, the list, ending one or all,
and when each was last used (recorded in batches)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from devstack.ports import wait_until_async
from services.auth import accounts
from services.auth.accounts import (
    _SESSIONS_PAST_THE_CAP,
    MAX_SESSIONS_PER_USER,
    AccountStore,
    SessionDevice,
)
from services.auth.handlers import session_device
from services.auth.session_handlers import EXPORT_SESSION_BYTES, SessionHandlers, within_bytes
from services.auth.store.database import Database, Statements
from services.auth.store.freshness import ReplicaFreshness
from services.auth.store.health import PrimaryHealth
from services.auth.store.last_seen import GRANULARITY, LastSeen
from services.contract import auth_pb2 as pb
from services.foundation.rpc.framing import SMALLEST_MAX_FRAME_BYTES
from services.foundation.rpc.protocol import RpcError
from tests.auth.conftest import Eventually
from tests.auth.test_accounts import log_in, register, wait_until_replica_covers


async def login_with(store: AccountStore, user_id: int, device: SessionDevice) -> str:
    session_id = secrets.token_urlsafe(16)
    await store.create_session(
        user_id, session_id, datetime.now(UTC) + timedelta(hours=1), device, password_changes=0
    )
    return session_id


def test_a_login_records_its_user_agent_cut_and_only_a_real_address() -> None:
    assert session_device("x" * 1000, "203.0.113.9") == SessionDevice("x" * 256, "203.0.113.9")
    assert session_device("curl/8", "not an address").ip == ""
    assert session_device("curl/8", "2001:db8::1").ip == "2001:db8::1"


async def test_the_list_has_the_live_sessions_newest_first_with_their_device(
    store: AccountStore,
) -> None:
    user = await register(store)
    other = await register(store)
    first = await login_with(store, user.id, SessionDevice("Firefox/140", "203.0.113.7"))
    ended = await log_in(store, user)
    expired = await log_in(store, user, lifetime=timedelta(microseconds=1))
    newest = await login_with(store, user.id, SessionDevice("", ""))
    await log_in(store, other)
    assert await store.revoke_session(user.id, ended)

    listed = await store.live_sessions(user.id)
    assert [record.id for record in listed] == [newest, first]
    assert expired not in [record.id for record in listed]
    assert (listed[1].user_agent, listed[1].ip) == ("Firefox/140", "203.0.113.7")
    assert (listed[0].user_agent, listed[0].ip, listed[0].last_seen_at) == (None, None, None)
    assert await store.live_sessions(secrets.randbits(62)) == []


async def test_at_most_the_100_newest_are_listed(store: AccountStore) -> None:
    user = await register(store)
    ids = [await log_in(store, user) for _ in range(103)]
    listed = [record.id for record in await store.live_sessions(user.id)]
    assert listed == ids[::-1][:100]


async def test_an_export_has_every_live_session_not_only_the_100_listed(
    store: AccountStore,
) -> None:
    """ "Take your data" shared the list's cap: with 105 sessions the export left out the
    five oldest, the calling one among them when it was."""
    handlers = SessionHandlers(store)
    user = await register(store)
    ids = [await log_in(store, user) for _ in range(103)]
    caller = pb.SessionRef(user_id=user.id, session_id=ids[0])  # the oldest
    deadline = asyncio.get_running_loop().time() + 10
    exported = await handlers.export_account(pb.ExportAccountRequest(session=caller), deadline)
    assert [info.id for info in exported.sessions] == ids[::-1]
    assert [info.id for info in exported.sessions if info.current] == [ids[0]]
    listed = await handlers.list_sessions(pb.ListSessionsRequest(session=caller), deadline)
    assert len(listed.sessions) == 100


def test_an_export_stops_at_its_byte_budget_newest_first() -> None:
    """1,000 sessions of 256-character user agents of 4-byte characters make a reply past the
    RPC frame limit, which fails the caller's whole connection: the newest that fit go."""
    sessions = [
        pb.SessionInfo(id=f"s{number:04d}", user_agent="\U0001f600" * 256, ip="203.0.113.7")
        for number in range(MAX_SESSIONS_PER_USER)
    ]
    kept = within_bytes(sessions)
    assert kept == sessions[: len(kept)] and 200 < len(kept) < len(sessions)
    reply = pb.ExportAccountReply(sessions=kept)
    assert reply.ByteSize() <= EXPORT_SESSION_BYTES
    ordinary = [pb.SessionInfo(id=f"s{n:04d}", user_agent="Firefox/140") for n in range(1000)]
    assert within_bytes(ordinary) == ordinary
    # The largest export fits in the lowest frame limit either tier accepts.
    user = pb.User(id=2**63, username="u" * 64, nickname="\U0001f600" * 64, avatar_key="k" * 200)
    largest = pb.ExportAccountReply(user=user, sessions=kept)
    envelope = pb.Envelope(call_id=2**32, method=99, payload=largest.SerializeToString())
    assert envelope.ByteSize() < SMALLEST_MAX_FRAME_BYTES


async def test_a_login_past_the_cap_ends_the_oldest_sessions(
    store: AccountStore, primary: Database
) -> None:
    """Without a cap, an account logged into tens of thousands of times (a script, or anyone
    holding the password: logins with the right one are not throttled) could no longer change
    its password, be locked, deleted or logged out everywhere: each of those revokes every
    session in one transaction under the MySQL deadline, and overran it every time."""
    user = await register(store)
    ids = [await log_in(store, user) for _ in range(MAX_SESSIONS_PER_USER + 2)]
    assert [await store.session_profile(user.id, s) is not None for s in ids[:3]] == [
        False,
        False,
        True,
    ]
    row = await primary.fetch_one(
        "test_unrevoked",
        "SELECT COUNT(*) AS unrevoked FROM sessions WHERE user_id = %s AND revoked_at IS NULL",
        (user.id,),
    )
    assert row == {"unrevoked": MAX_SESSIONS_PER_USER}
    assert await store.end_sessions(user.id) == MAX_SESSIONS_PER_USER


async def test_a_login_stands_when_ending_the_sessions_past_the_cap_fails(
    store: AccountStore, primary_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ending the oldest sessions is the login's housekeeping: if it overruns (their rows locked
    past the database deadline), the new session stays and the user's next login ends them."""
    monkeypatch.setattr(accounts, "MAX_SESSIONS_PER_USER", 2)
    user = await register(store)
    oldest, *_ = [await log_in(store, user) for _ in range(2)]
    locker = await Database.open(primary_dsn, role="primary", pool_size=1, timeout=60.0)
    locked, release = asyncio.Event(), asyncio.Event()

    async def hold_the_oldest_row() -> None:
        async with locker.transaction("hold") as transaction:
            await transaction.execute("SELECT id FROM sessions WHERE id = %s FOR UPDATE", (oldest,))
            locked.set()
            await release.wait()

    holder = asyncio.create_task(hold_the_oldest_row())
    try:
        await asyncio.wait_for(locked.wait(), 10.0)
        newest = await log_in(store, user)  # its revoke of `oldest` times out
        assert await store.session_profile(user.id, newest) is not None
        assert await store.session_profile(user.id, oldest) is not None
    finally:
        release.set()
        await holder
        await locker.close()
    await log_in(store, user)
    assert await store.session_profile(user.id, oldest) is None


REVOKED_SESSIONS = 3000


async def rows_read(statements: Statements) -> int:
    """The rows this connection's statements have read through the handler so far."""
    status = await statements.fetch_all("SHOW SESSION STATUS LIKE 'Handler_read%%'")
    return sum(int(row["Value"]) for row in status)


async def test_ending_sessions_past_the_cap_reads_only_the_live_ones(
    store: AccountStore, primary: Database
) -> None:
    """Every login looks for its user's sessions past the cap. Through sessions_user_id alone it
    read all of the user's rows, the revoked ones too (they stay until they expire, one more per
    login past the cap), and sorted the live ones: 0.7 to 1.8 s of a login's 2 s deadline with
    300,000 revoked."""
    user = await register(store)
    values = ", ".join(["(%s, %s, NOW(6) - INTERVAL %s SECOND, NOW(6) + INTERVAL 1 DAY, %s)"] * 500)
    for batch in range(REVOKED_SESSIONS // 500 + 3):
        revoked = "2000-01-01" if batch >= 3 else None  # 1,500 live, the rest revoked
        args = [
            value
            for row in range(500)
            for value in (secrets.token_urlsafe(16), user.id, batch * 500 + row, revoked)
        ]
        await primary.execute(
            "test_sessions",
            f"INSERT INTO sessions (id, user_id, created_at, expires_at, revoked_at) VALUES {values}",
            args,
        )
    async with primary.statements("test_cap") as statements:
        before = await rows_read(statements)
        past = await statements.fetch_all(_SESSIONS_PAST_THE_CAP, (user.id, MAX_SESSIONS_PER_USER))
        read = await rows_read(statements) - before
    assert len(past) == 500
    assert read < MAX_SESSIONS_PER_USER + 500 + REVOKED_SESSIONS // 2, read


async def test_a_new_session_is_listed_at_once_despite_a_stalled_replica(
    store: AccountStore,
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    user = await register(store)
    before = await log_in(store, user)
    await wait_until_replica_covers(primary, replica, freshness, eventually)
    await stop_sql_thread()
    after = await log_in(store, user)  # the replica will not have it
    assert [record.id for record in await store.live_sessions(user.id)] == [after, before]


async def test_a_login_does_not_make_the_users_profile_reads_wait_for_it(
    store: AccountStore,
    primary: Database,
    replica: Database,
    freshness: ReplicaFreshness,
    eventually: Eventually,
    stop_sql_thread: Callable[[], Awaitable[None]],
) -> None:
    """A profile read needs the user's last write, not their last login: else, during a primary
    outage, every user who logged in just before it could not be read from the replica."""
    user = await register(store)
    await wait_until_replica_covers(primary, replica, freshness, eventually)
    await stop_sql_thread()
    await log_in(store, user)  # the replica will not have it
    profile_requires = await store.cache.required_for(user.id)
    assert profile_requires is not None
    assert freshness.pick_reader(profile_requires) is replica
    list_requires = await store.cache.required_for(user.id, logins=True)
    assert list_requires is not None and freshness.pick_reader(list_requires) is primary


async def test_ending_one_session_answers_true_only_for_a_live_one_of_the_user(
    store: AccountStore,
) -> None:
    user = await register(store)
    other = await register(store)
    session_id = await log_in(store, user)
    theirs = await log_in(store, other)
    expired = await log_in(store, user, lifetime=timedelta(microseconds=1))
    assert not await store.end_session(user.id, theirs)  # someone else's
    assert not await store.end_session(user.id, "x" * 65)  # malformed
    assert not await store.end_session(user.id, "no-such-session")
    assert not await store.end_session(user.id, expired)
    assert await store.session_profile(other.id, theirs) is not None
    assert await store.end_session(user.id, session_id)
    assert await store.session_profile(user.id, session_id) is None
    assert not await store.end_session(user.id, session_id)  # already ended


async def test_ending_all_sessions_ends_each_but_the_one_kept(store: AccountStore) -> None:
    user = await register(store)
    other = await register(store)
    sessions = [await log_in(store, user) for _ in range(3)]
    theirs = await log_in(store, other)
    for session_id in sessions:  # cached as live in Redis: the tombstones must replace that
        assert await store.session_profile(user.id, session_id) is not None
    assert await store.end_sessions(user.id, keep=sessions[0]) == 2
    assert [await store.session_profile(user.id, s) is not None for s in sessions] == [
        True,
        False,
        False,
    ]
    assert await store.end_sessions(user.id) == 1
    assert await store.session_profile(user.id, sessions[0]) is None
    assert await store.live_sessions(user.id) == []
    assert await store.session_profile(other.id, theirs) is not None


async def test_ending_all_sessions_holds_while_redis_is_down(
    store: AccountStore, stop_redis: Callable[[], Awaitable[None]]
) -> None:
    user = await register(store)
    sessions = [await log_in(store, user) for _ in range(2)]
    for session_id in sessions:
        assert await store.session_profile(user.id, session_id) is not None
    await stop_redis()
    assert await store.end_sessions(user.id) == 2
    for session_id in sessions:
        assert await store.session_profile(user.id, session_id) is None


async def test_the_session_handlers_mark_the_current_one_and_refuse_what_is_not_yours(
    store: AccountStore,
) -> None:
    handlers = SessionHandlers(store)
    user = await register(store)
    other = await register(store)
    current = await log_in(store, user)
    second = await log_in(store, user)
    theirs = await log_in(store, other)
    caller = pb.SessionRef(user_id=user.id, session_id=current)
    deadline = asyncio.get_running_loop().time() + 10

    listed = await handlers.list_sessions(pb.ListSessionsRequest(session=caller), deadline)
    assert [(info.id, info.current) for info in listed.sessions] == [
        (second, False),
        (current, True),
    ]
    assert all(info.created_at_ms > 0 and info.expires_at_ms > 0 for info in listed.sessions)

    for wrong in (theirs, "", "x" * 10_000):
        with pytest.raises(RpcError) as refused:
            await handlers.end_session(pb.EndSessionRequest(session=caller, id=wrong), deadline)
        assert (refused.value.status, refused.value.reason) == (
            pb.STATUS_NOT_FOUND,
            "session_not_found",
        )
    ended = await handlers.end_session(pb.EndSessionRequest(session=caller, id=second), deadline)
    assert not ended.was_current
    ended = await handlers.end_session(pb.EndSessionRequest(session=caller, id=current), deadline)
    assert ended.was_current
    with pytest.raises(RpcError) as refused:
        await handlers.list_sessions(pb.ListSessionsRequest(session=caller), deadline)
    assert refused.value.status == pb.STATUS_UNAUTHENTICATED

    exported = await handlers.export_account(
        pb.ExportAccountRequest(session=pb.SessionRef(user_id=other.id, session_id=theirs)),
        deadline,
    )
    assert exported.user.username == other.username
    assert [(info.id, info.current) for info in exported.sessions] == [(theirs, True)]


# last_seen_at


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def last_seen_at(primary: Database, session_id: str) -> datetime | None:
    row = await primary.fetch_one(
        "test", "SELECT last_seen_at FROM sessions WHERE id = %s", (session_id,)
    )
    assert row is not None
    value: datetime | None = row["last_seen_at"]
    return value


async def test_uses_are_noted_at_most_once_a_minute_and_written_in_one_flush(
    store: AccountStore, primary: Database
) -> None:
    clock = Clock()
    recorder = LastSeen(primary, interval=60.0, max_pending=100, clock=clock)
    user = await register(store)
    first, second = await log_in(store, user), await log_in(store, user)
    recorder.seen(first)
    noted = recorder.pending(first)
    assert noted is not None
    clock.now += GRANULARITY - 1
    recorder.seen(first)
    assert recorder.pending(first) == noted  # not noted again within the minute
    recorder.seen(second)
    assert await last_seen_at(primary, first) is None  # nothing written per use
    await recorder.flush()
    assert recorder.pending(first) is None
    assert await last_seen_at(primary, first) == noted
    assert await last_seen_at(primary, second) is not None
    clock.now += 1
    recorder.seen(first)  # a minute after it was noted: noted again
    assert recorder.pending(first) is not None


async def test_pending_uses_are_bounded_and_kept_while_the_primary_is_down(
    store: AccountStore, primary: Database
) -> None:
    recorder = LastSeen(primary, interval=60.0, max_pending=2, clock=Clock())
    user = await register(store)
    sessions = [await log_in(store, user) for _ in range(3)]
    for session_id in sessions:
        recorder.seen(session_id)
    assert recorder.pending(sessions[2]) is None  # over the bound: not noted
    health = PrimaryHealth()
    health.probe_failed("stopped by the test")
    primary.health = health
    try:
        await recorder.flush()  # skipped, no error
        assert recorder.pending(sessions[0]) is not None
        assert await last_seen_at(_unguarded(primary), sessions[0]) is None
    finally:
        health.probe_succeeded()
        primary.health = None
    await recorder.flush()
    assert await last_seen_at(primary, sessions[0]) is not None


@pytest.mark.parametrize("primary_down", [False, True], ids=["primary-up", "primary-down"])
async def test_a_flush_failing_during_a_primary_outage_adds_no_warning_to_the_health_line(
    store: AccountStore, primary: Database, primary_down: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A flush already waiting when the primary is marked down times out after it: the health
    line has said so. The same timeout with the primary up is worth its warning."""
    user = await register(store)
    session_id = await log_in(store, user)
    health = PrimaryHealth()
    guarded = Database(primary._pool, primary.address, role="primary", timeout=primary.timeout)
    guarded.health = health
    recorder = LastSeen(guarded, interval=60.0, max_pending=10)
    recorder.seen(session_id)

    async def the_flush_waits_for_the_row_lock() -> bool:
        rows = await primary.fetch_all(
            "test_processlist",
            "SELECT 1 FROM information_schema.processlist"
            " WHERE info LIKE 'UPDATE sessions SET last_seen_at%%'",
        )
        return bool(rows)

    # Held statements have a deadline each, not one for the whole block (as a transaction has).
    async with primary.held_connection("test_row_lock") as locking:
        await locking.execute("BEGIN")
        await locking.fetch_all("SELECT id FROM sessions WHERE id = %s FOR UPDATE", (session_id,))
        flush = asyncio.create_task(recorder.flush())
        await wait_until_async(the_flush_waits_for_the_row_lock, 5.0, "the flush waits")
        if primary_down:
            health.probe_failed("stopped by the test")
        with caplog.at_level(logging.WARNING, logger="services.auth.store.last_seen"):
            await flush
    warnings = [r for r in caplog.records if r.name == "services.auth.store.last_seen"]
    assert len(warnings) == (0 if primary_down else 1), [r.getMessage() for r in warnings]
    assert recorder.pending(session_id) is not None  # kept for the next flush either way


async def test_a_flush_of_many_noted_sessions_writes_them_all_within_the_deadline(
    store: AccountStore, primary: Database
) -> None:
    """One UPDATE of n rows costs the server n² CASE comparisons: 20,000 rows in one statement
    outlast a 1 s deadline, on every flush, and none is ever written."""
    user = await register(store)
    count = 20_000
    prefix = f"flush-{secrets.token_hex(4)}-"
    await primary.execute(
        "test_many_sessions",
        "INSERT INTO sessions (id, user_id, created_at, expires_at)"
        " SELECT CONCAT(%s, seq), %s, NOW(6), NOW(6) + INTERVAL 1 HOUR FROM seq_1_to_20000",
        (prefix, user.id),
    )
    impatient = Database(primary._pool, primary.address, role="primary", timeout=1.0)
    recorder = LastSeen(impatient, interval=60.0, max_pending=count)
    for number in range(1, count + 1):
        recorder.seen(f"{prefix}{number}")
    await recorder.flush()
    written = await primary.fetch_one(
        "test_many_sessions",
        "SELECT COUNT(*) AS n FROM sessions WHERE user_id = %s AND last_seen_at IS NOT NULL",
        (user.id,),
    )
    assert written is not None and written["n"] == count
    assert recorder.pending(f"{prefix}1") is None


async def test_a_session_check_notes_the_use_which_the_list_shows_before_it_is_written(
    store: AccountStore, primary: Database
) -> None:
    user = await register(store)
    session_id = await log_in(store, user)
    recorder = LastSeen(primary, interval=60.0, max_pending=100)
    store._last_seen = recorder  # the fixture's store records nothing
    assert await store.session_profile(user.id, session_id) is not None
    noted = recorder.pending(session_id)
    assert noted is not None
    listed = await store.live_sessions(user.id)
    assert listed[0].last_seen_at == noted
    await recorder.flush()
    assert await last_seen_at(primary, session_id) == noted


async def test_a_use_noted_before_a_deletion_is_not_written_back_over_its_erasure(
    store: AccountStore, primary: Database
) -> None:
    """The deletion erases each session's last use; the next flush must not write the use
    noted by the deletion's own session check (or any shortly before) back."""
    user = await register(store)
    session_id = await log_in(store, user)
    recorder = LastSeen(primary, interval=60.0, max_pending=100)
    store._last_seen = recorder
    assert await store.session_profile(user.id, session_id) is not None
    assert recorder.pending(session_id) is not None
    assert await store.delete_account(user.id, session_id, free_username=False) is not None
    await recorder.flush()
    assert await last_seen_at(primary, session_id) is None


def _unguarded(primary: Database) -> Database:
    """The same pool without its health breaker, to look at what was written."""
    return Database(primary._pool, primary.address, role="primary", timeout=primary.timeout)
